"""What a run directory says about itself, and the card's metadata (huggingface_hub's ModelCardData).

A local base model or dataset is named by its directory name only: a card is published, the
trainer's paths are not."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCardData

from imgtune.rundir import ADAPTER_CONFIG, METRICS, RUN_CONFIG
from imgtune.tuning.hub import default_repo_name

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


@dataclass
class RunFacts:
    metrics: dict  # metrics.json
    settings: dict  # imgtune.yaml
    peft_type: str | None  # adapter_config.json's, e.g. LORA; None for full/linear runs
    base_id: str | None  # the base model's hub id; None when it was a local directory
    dataset_id: str | None  # the dataset's hub id; None for local data
    folder: str  # how the card names its directory in commands: relative as given, else its name
    merged: bool = False
    architecture: str = "-"  # config.json's, e.g. ViTForImageClassification
    input_size: str = "-"  # what the image processor resizes to

    @property
    def method(self) -> str:
        return self.metrics["method"]

    @property
    def library(self) -> str:
        return "peft" if self.peft_type and not self.merged else "transformers"


def is_local(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or Path(spec).expanduser().exists()


def model_hub_id(spec: str) -> str | None:
    return None if is_local(spec) or not HUB_ID.fullmatch(spec) else spec


def dataset_hub_id(spec: str) -> str | None:
    """``food101`` or ``food101:train[:5000]`` are the hub's; folders, CSV files and digits are not."""
    if spec == "digits" or spec.lower().endswith(".csv") or is_local(spec):
        return None
    return model_hub_id(spec.partition(":")[0])


def short_name(spec: str) -> str:
    """A path's last part: what may be written of a local model or dataset."""
    path = Path(spec.rstrip("/"))
    return path.stem if path.suffix.lower() == ".csv" else path.name


def shown_folder(path: str | Path) -> str:
    return str(path) if not Path(path).expanduser().is_absolute() else Path(path).name


def read_facts(run: Path, folder: str | Path | None = None) -> RunFacts:
    metrics = json.loads((run / METRICS).read_text())
    settings = (yaml.safe_load((run / RUN_CONFIG).read_text()) if (run / RUN_CONFIG).is_file() else None) or {}
    adapter = run / ADAPTER_CONFIG
    peft_type = json.loads(adapter.read_text()).get("peft_type") if adapter.is_file() else None
    return RunFacts(
        metrics,
        settings,
        peft_type,
        model_hub_id(metrics["model"]),
        dataset_hub_id(metrics["dataset"]),
        shown_folder(folder if folder is not None else settings.get("output_dir", run)),
        architecture=", ".join(read_json(run / "config.json").get("architectures") or ["-"]),
        input_size=input_size(settings, read_json(run / "preprocessor_config.json")),
    )


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def input_size(settings: dict, processor: dict) -> str:
    if settings.get("image_size"):
        return f"{settings['image_size']}x{settings['image_size']} (--image-size)"
    size = processor.get("size")
    if isinstance(size, dict) and {"height", "width"} <= set(size):
        return f"{size['height']}x{size['width']}"
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in size.items()) if isinstance(size, dict) else str(size)


def evaluated(metrics: dict) -> tuple[str, dict]:
    """The split the final figures come from: test, else validation (as metrics.json's confusion matrix)."""
    return ("test", metrics["test"]) if metrics.get("test") else ("validation", metrics["validation"])


def model_name(f: RunFacts) -> str:
    name = default_repo_name(f.metrics["model"], f.method, f.metrics["dataset"])
    return f"{name}-merged" if f.merged else name


def card_data(f: RunFacts) -> ModelCardData:
    split, scores = evaluated(f.metrics)
    dataset = f.metrics["dataset"]
    loader = "csv" if dataset.lower().endswith(".csv") else "digits" if dataset == "digits" else "imagefolder"
    result = EvalResult(
        task_type="image-classification",
        task_name="Image Classification",
        dataset_type=f.dataset_id or loader,
        dataset_name=f.dataset_id or short_name(dataset),
        dataset_split=split,
        metric_type="accuracy",
        metric_name="Accuracy",
        metric_value=scores["accuracy"],
    )
    tags = ["imgtune", f.method, *([f.peft_type.lower()] if f.peft_type else []), *(["merged"] if f.merged else [])]
    return ModelCardData(
        library_name=f.library,
        base_model=f.base_id,
        pipeline_tag="image-classification",
        tags=list(dict.fromkeys(tags)),
        datasets=[f.dataset_id] if f.dataset_id else None,
        metrics=["accuracy"],
        model_name=model_name(f),
        eval_results=[result],
    )
