import json

from conftest import run_cli
from imgtune.evaluate import evaluate


def test_evaluate_matches_the_training_validation_figures(lora_run, colour_folder):
    metrics = evaluate(str(lora_run), str(colour_folder), progress=False)
    assert metrics["count"] == 30
    assert 0 <= metrics["accuracy"] <= 1 and metrics["top5"] == 1.0  # 3 classes: top-5 always holds
    assert set(metrics["per_class_accuracy"]) == {"red", "green", "blue"}


def test_evaluate_cli_json(lora_run, colour_folder):
    proc = run_cli("evaluate", lora_run, "--dataset", colour_folder, "--json")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)
    assert metrics["count"] == 30 and metrics["bad_files"] == 0
