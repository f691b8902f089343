"""imgtune merge: the saved directory is a plain transformers model with the adapter's logits."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from conftest import run_cli, tiny_train_config
from imgtune.rundir import load_run
from imgtune.tuning.recipe import train

# Loads DIR with transformers alone: peft is made unimportable first, so a merged directory
# that still needed peft (adapter_config.json, lora_* weights) would fail here.
NO_PEFT_LOGITS = """
import sys, json, torch
sys.modules["peft"] = None
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained(sys.argv[1]).eval()
pixels = torch.load(sys.argv[2])
with torch.no_grad():
    logits = model(pixel_values=pixels).logits
labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
print(json.dumps({"logits": logits.tolist(), "labels": labels,
                  "type": type(model).__name__}))
"""


@pytest.mark.parametrize("method", ["lora", "loha", "lokr", "adalora"])
def test_merged_directory_loads_without_peft_and_matches(tmp_path, tiny_vit, colour_folder, method):
    out = tmp_path / method
    train(tiny_train_config(tiny_vit, colour_folder, out, method=method, epochs=1))
    result = run_cli("merge", out, "--to", tmp_path / "merged")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    assert (tmp_path / "merged" / "preprocessor_config.json").is_file()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = load_run(out)
    assert not [w for w in caught if "rank_pattern" in str(w.message)]  # peft's false alarm for AdaLoRA
    pixels = torch.from_numpy(np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32))
    torch.save(pixels, tmp_path / "pixels.pt")
    with torch.no_grad():
        unmerged = run.model(pixel_values=pixels).logits
    proc = subprocess.run(
        [sys.executable, "-c", NO_PEFT_LOGITS, str(tmp_path / "merged"), str(tmp_path / "pixels.pt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["type"] == "ViTForImageClassification"
    assert got["labels"] == run.labels == ["blue", "green", "red"]
    torch.testing.assert_close(torch.tensor(got["logits"]), unmerged, rtol=0, atol=1e-4)
    # nothing of the adapter is left: the base model's tensors, shapes and all (the head has this run's
    # classes), which is why a merged model runs at the base model's speed
    assert tensor_shapes(tmp_path / "merged") == {
        k: (len(run.labels), *v[1:]) if k.startswith("classifier.") else v for k, v in tensor_shapes(tiny_vit).items()
    }


def tensor_shapes(model_dir) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def test_full_run_is_already_plain(tmp_path, tiny_vit, colour_folder):
    out = tmp_path / "linear"
    train(tiny_train_config(tiny_vit, colour_folder, out, method="linear", epochs=1))
    result = run_cli("merge", out, "--to", tmp_path / "merged")
    assert result.returncode == 2
    assert "already a plain transformers model" in result.stderr and "Traceback" not in result.stderr


def test_merge_refuses_non_run(tmp_path):
    result = run_cli("merge", tmp_path, "--to", tmp_path / "merged")
    assert result.returncode == 2 and "not an imgtune output directory" in result.stderr
