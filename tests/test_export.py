"""imgtune export: ONNX with a dynamic batch axis, onnxruntime equal to torch, int8 with accuracy report."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import torch

from conftest import run_cli
from imgtune.output import load_run


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
    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "from imgtune.cli import main\n"
            f"sys.exit(main(['export', {str(lora_run)!r}, '--onnx', {str(tmp_path / 'm.onnx')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert 'pip install -e ".[export]"' in proc.stderr and "Traceback" not in proc.stderr
