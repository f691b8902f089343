"""`imgtune demo` is a real run: backbone trained on digits 0-4, LoRA on 5-9, predictions via the saved adapter."""

import json
import re

from conftest import read_metrics, run_cli


def test_demo_end_to_end(tmp_path):
    proc = run_cli("demo", "--output-dir", tmp_path / "demo")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "demo" / "lora-digits-5-9"
    metrics = read_metrics(out)
    assert metrics["method"] == "lora" and metrics["labels"] == ["5", "6", "7", "8", "9"]
    assert metrics["test"]["accuracy"] >= 0.90
    assert metrics["trainable_params"] < metrics["total_params"] / 5
    assert (out / "adapter_model.safetensors").stat().st_size == metrics["adapter_bytes"]
    backbone = read_metrics(tmp_path / "demo" / "backbone-digits-0-4")
    assert backbone["method"] == "full" and backbone["labels"] == ["0", "1", "2", "3", "4"]
    # the printed report: parameter line, epoch table, test accuracy, size, predictions through the adapter
    assert "trainable params:" in proc.stdout
    assert "Epoch | Training Loss | Validation Loss | Accuracy" in proc.stdout
    assert f"LoRA test accuracy on digits 5-9: {metrics['test']['accuracy']:.4f}" in proc.stdout
    predictions = re.findall(r"predicted (\d) \([0-9.]+\), true (\d)", proc.stdout)
    assert len(predictions) == 6
    assert sum(p == t for p, t in predictions) >= 5
    # the evaluate command the demo suggests reproduces the reported test accuracy on the held-out images
    evaluated = run_cli("evaluate", out, "--dataset", tmp_path / "demo" / "test-digits-5-9", "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert f"--dataset {tmp_path / 'demo' / 'test-digits-5-9'}" in proc.stdout
    figures = json.loads(evaluated.stdout)
    assert figures["count"] == metrics["test"]["count"]
    assert abs(figures["accuracy"] - metrics["test"]["accuracy"]) < 1e-9
