"""imgtune export: ONNX with a dynamic batch axis, onnxruntime equal to torch, int8 with accuracy report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import run_cli, save_tiny_vit
from imgtune.errors import UserError
from imgtune.inference.export import export
from imgtune.rundir import load_run


def test_export_onnx_matches_torch_with_dynamic_batch(tmp_path, lora_run, colour_folder):
    path = tmp_path / "onnx" / "model.onnx"
    result = run_cli("export", lora_run, "--onnx", path, "--int8", "--dataset", colour_folder, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["max_abs_diff"] <= 1e-3
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    # the unmerged adapter in torch vs the exported (merged) graph, on batch sizes other than the traced one
    run = load_run(lora_run)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        pixels = torch.randn(n, 3, 32, 32)
        with torch.no_grad():
            expected = run.model(pixel_values=pixels).logits.numpy()
        got = sess.run(["logits"], {"pixel_values": pixels.numpy()})[0]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)

    # int8: a separate, smaller graph, and the accuracy of both measured on the same images
    assert (tmp_path / "onnx" / "model.int8.onnx").is_file()
    assert summary["int8_bytes"] < summary["fp32_bytes"]
    assert summary["accuracy_count"] == 30
    assert summary["accuracy_change"] == summary["int8_accuracy"] - summary["fp32_accuracy"]
    assert 0.0 <= summary["int8_accuracy"] <= 1.0
    assert json.loads((tmp_path / "onnx" / "labels.json").read_text()) == run.labels


def test_export_without_onnxruntime_says_how_to_install(tmp_path, lora_run):
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from imgtune.cli.main import main\n"
        f"sys.exit(main(['export', {str(lora_run)!r}, '--onnx', {str(tmp_path / 'm.onnx')!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert 'pip install -e ".[export]"' in proc.stderr and "Traceback" not in proc.stderr


def plain_vit(path, labels: list[str], image_size: int):
    """A plain saved model (what a full run leaves) with the given labels: a second, different model."""
    save_tiny_vit(path, num_labels=len(labels), image_size=image_size, seed=1)
    config = json.loads((path / "config.json").read_text())
    config.update(id2label={str(i): l for i, l in enumerate(labels)}, label2id={l: i for i, l in enumerate(labels)})
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_export_refuses_to_put_another_models_labels_beside_an_onnx_file(tmp_path, lora_run):
    folder = tmp_path / "onnx"
    export(lora_run, folder / "x.onnx")
    side = {name: (folder / name).read_bytes() for name in ("labels.json", "preprocessor_config.json")}
    onnx_bytes = (folder / "x.onnx").read_bytes()
    export(lora_run, folder / "x.onnx")  # the same run again: the same content, so that is fine
    assert json.loads(side["labels.json"]) == load_run(lora_run).labels

    # other labels: refused through the CLI with one line, before anything is written
    other = plain_vit(tmp_path / "other", ["cat", "dog"], 32)
    proc = run_cli("export", other, "--onnx", folder / "y.onnx")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"imgtune: error: {folder} already holds labels.json of another model: "
        "export each model into its own folder (or delete it first)"
    )
    # the same labels but another preprocessing (image size) is another model too
    same_labels = plain_vit(tmp_path / "same-labels", load_run(lora_run).labels, 48)
    with pytest.raises(UserError, match=r"already holds preprocessor_config.json of another model: export each"):
        export(same_labels, folder / "z.onnx")
    assert not (folder / "y.onnx").exists() and not (folder / "z.onnx").exists()
    assert {name: (folder / name).read_bytes() for name in side} == side
    assert (folder / "x.onnx").read_bytes() == onnx_bytes

    # in its own folder the other model exports, with its own labels
    summary = export(other, tmp_path / "other-onnx" / "y.onnx")
    assert summary["labels"] == ["cat", "dog"]
    assert json.loads((tmp_path / "other-onnx" / "labels.json").read_text()) == ["cat", "dog"]


def test_export_to_a_path_that_cannot_be_written_names_it(tmp_path, lora_run):
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    bad = [not_a_folder / "y.onnx"] + ([Path("/proc/imgtune-x/y.onnx")] if Path("/proc/self").is_dir() else [])
    for path in bad:
        with pytest.raises(
            UserError,
            match=rf"^cannot write {re.escape(str(path))} \(.*\): pass --onnx a path in a "
            "folder you can write to$",
        ):
            export(lora_run, path)
    with pytest.raises(UserError, match="is a folder: give the path of the file to write"):
        export(lora_run, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
