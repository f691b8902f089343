"""A run explains itself: README.md is a Hugging Face model card (metadata huggingface_hub reads back,
per-class scores, the epoch table, working usage code) and report.html is the same as one page."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results

from conftest import read_metrics, tiny_train_config, write_image
from imgtune.inference.merge import merge
from imgtune.modelcard import write_run_docs
from imgtune.tuning.recipe import train
from test_report import assert_self_contained


def metadata_text(path) -> str:
    return path.read_text().split("---")[1]


def final(metrics: dict) -> tuple[str, float]:
    split = "test" if metrics.get("test") else "validation"
    return split, metrics[split]["accuracy"]


def check_card(path, library: str, metrics: dict, local_paths) -> ModelCard:
    """Loads with huggingface_hub, its metadata round-trips, its model-index holds the run's accuracy,
    and no path of this machine is in it."""
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["library_name"] == library and data["pipeline_tag"] == "image-classification"
    assert "imgtune" in data["tags"] and metrics["method"] in data["tags"] and data["metrics"] == ["accuracy"]
    name, results = model_index_to_eval_results(data["model-index"])
    assert ModelCardData(**data).to_dict() == data  # what the hub's parser reads back is what was written
    split, accuracy = final(metrics)
    assert len(results) == 1 and results[0].metric_type == "accuracy"
    assert results[0].task_type == "image-classification" and results[0].dataset_split == split
    assert results[0].metric_value == pytest.approx(accuracy)
    text = path.read_text()
    assert "[More Information Needed]" not in text
    for local in local_paths:  # neither in the metadata nor in the text
        assert str(local) not in text
    assert not re.search(r"^\s*-?\s*\w*:?\s*['\"]?/", metadata_text(path), re.M)  # no absolute path as a value
    return card


def test_run_card(lora_run, tiny_vit, colour_folder):
    metrics = read_metrics(lora_run)
    card = check_card(lora_run / "README.md", "peft", metrics, [tiny_vit.parent, colour_folder.parent, lora_run])
    assert card.data.base_model is None and card.data.datasets is None  # local model and data: no hub ids
    assert "lora" in card.data.tags  # peft's method name
    text = card.text
    assert "`tiny-vit`" in text and "`colours`" in text  # local ones by their directory name only
    for split, count in metrics["splits"].items():
        if count:
            assert re.search(rf"^\| {split} \| {count} \|$", text, re.M)
    settings = yaml.safe_load((lora_run / "imgtune.yaml").read_text())
    assert f"| lr | {settings['lr']} |" in text and f"| epochs | {settings['epochs']} |" in text
    assert f"{metrics['trainable_params']:,} of {metrics['total_params']:,}" in text

    epochs = [l for l in text.splitlines() if re.match(r"^\| \d+( \(best\))? \| \d+ \|", l)]
    assert [int(l.split()[1]) for l in epochs] == [row["epoch"] for row in metrics["history"]]
    assert f"| {metrics['best_epoch']} (best) |" in text

    rows = {l.split(" | ")[0][2:]: l.split(" | ")[1:] for l in text.splitlines() if l.startswith("| ")}
    cm = metrics["confusion_matrix"]
    for i, label in enumerate(metrics["labels"]):
        precision, recall, f1, images = rows[label]
        assert int(images.rstrip(" |")) == sum(cm[i])
        assert float(recall) == pytest.approx(cm[i][i] / sum(cm[i]), abs=1e-4)
        predicted = sum(row[i] for row in cm)
        assert precision == "-" if not predicted else float(precision) == pytest.approx(cm[i][i] / predicted, abs=1e-4)
    assert "macro average" in rows
    assert "![loss and validation accuracy per epoch](training_curves.png)" in text
    assert "PeftModel.from_pretrained" in text and "imgtune predict lora img.jpg" in text


def test_card_snippet_runs(lora_run, tmp_path):
    """The card's peft code, as written, on this run and one image, agrees with the model."""
    text = ModelCard.load(lora_run / "README.md").text
    code = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "PeftModel" in b)
    image = write_image(tmp_path / "red.png", (200, 40, 40), size=(48, 48))
    code = code.replace('run = "lora"', f"run = {str(lora_run)!r}").replace('"img.jpg"', repr(str(image)))
    printed = []
    exec(code, {"print": printed.append})
    assert printed and printed[0] in read_metrics(lora_run)["labels"]


def test_run_page_is_self_contained(lora_run):
    page = (lora_run / "report.html").read_text()
    assert_self_contained(page, expected_images=2)  # training curves, confusion matrix
    metrics = read_metrics(lora_run)
    assert "PeftModel.from_pretrained" in page and "macro average" in page
    assert all(f"<td>{label}</td>" in page for label in metrics["labels"])


def test_hub_ids_go_into_the_metadata(lora_run, tmp_path):
    """A hub base model and dataset are named in the metadata (no network: the card is only written)."""
    run = tmp_path / "run"
    shutil.copytree(lora_run, run, ignore=shutil.ignore_patterns("checkpoints", "*.safetensors"))
    metrics = read_metrics(run)
    metrics.update(model="google/vit-base-patch16-224-in21k", dataset="food101:train[:500]")
    metrics["test"] = {**metrics["validation"], "accuracy": 0.5}
    (run / "metrics.json").write_text(json.dumps(metrics))
    card, page = write_run_docs(run)
    data = check_card(card, "peft", metrics, [tmp_path]).data
    assert data.base_model == "google/vit-base-patch16-224-in21k" and data.datasets == ["food101"]
    assert data.eval_results[0].dataset_type == "food101" and data.eval_results[0].dataset_split == "test"
    assert "Validation accuracy:" in ModelCard.load(card).text


def test_merged_model_card(lora_run, tmp_path, tiny_vit):
    target = merge(lora_run, tmp_path / "merged")
    metrics = read_metrics(lora_run)
    card = check_card(target / "README.md", "transformers", metrics, [tiny_vit.parent, lora_run])
    assert "merged" in card.data.tags and card.data.model_name.endswith("-merged")
    assert "**merged** model" in card.text and "PeftModel" not in card.text
    assert "AutoModelForImageClassification.from_pretrained(run)" in card.text
    assert (target / "training_curves.png").is_file() and (target / "confusion_matrix.png").is_file()


def test_full_run_card(tmp_path, tiny_vit, colour_folder):
    out = tmp_path / "full"
    train(tiny_train_config(tiny_vit, colour_folder, out, method="full", epochs=1))
    card = check_card(out / "README.md", "transformers", read_metrics(out), [tiny_vit.parent, out])
    assert "PeftModel" not in card.text and "| rank |" not in card.text  # no adapter, no adapter settings
    assert "the whole fine-tuned model" in card.text
    assert_self_contained((out / "report.html").read_text(), expected_images=2)
