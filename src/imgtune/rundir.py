"""The run directory format: what ``train`` writes and what evaluate/predict/merge/export/serve read.

An adapter run is a standard PEFT adapter directory (adapter_config.json,
adapter_model.safetensors with the classifier head) plus the image processor's config and
a config.json holding the label maps, so the seeds' inference snippet works on it as is.
A ``full``/``linear`` run is a plain transformers model directory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import peft
import torch
import yaml
from safetensors import safe_open
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

from imgtune.errors import UserError
from imgtune.preflight import check_model_files, looks_like_path
from imgtune.storage import publish_dir
from imgtune.tuning.methods import METHODS, Method
from imgtune.tuning.pretrained import HEAD_NAMES, load_base_model, quiet_transformers

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
RUN_CONFIG = "imgtune.yaml"
METRICS = "metrics.json"


@dataclass
class LoadedRun:
    model: torch.nn.Module
    processor: object
    labels: list[str]
    is_adapter: bool
    path: Path


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if isinstance(model, peft.PeftModel) else model


# everything train writes at the top of a run directory (checkpoints/ and logs/ have their own rules)
RUN_FILES = (
    ADAPTER_CONFIG, ADAPTER_WEIGHTS, "adapter_model.bin", "model.safetensors", "pytorch_model.bin", "config.json",
    "preprocessor_config.json", RUN_CONFIG, METRICS, "bad_files.txt", "README.md", "report.html",
    "training_curves.png", "confusion_matrix.png",
)  # fmt: skip


def publish_run(out: Path, fill: Callable[[Path], None]) -> None:
    """Write a run directory through ``fill`` and publish it whole (storage.publish_dir). What the
    directory holds besides an earlier run's files (checkpoints/, logs/, the user's own) is kept."""
    kept = tuple(p.name for p in out.iterdir() if not is_run_file(p.name)) if out.is_dir() else ()
    publish_dir(out, fill, carry=kept)


def is_run_file(name: str) -> bool:
    """Written by train: the files above, and weights in any layout (a large full model is saved in
    shards, model-00001-of-00002.safetensors with an index), which an earlier run must not leave behind."""
    return name in RUN_FILES or name.endswith((".safetensors", ".bin", ".index.json"))


def required_files(out: Path) -> list[str]:
    if (out / ADAPTER_CONFIG).is_file():
        return [ADAPTER_CONFIG, ADAPTER_WEIGHTS, "config.json", "preprocessor_config.json"]
    sharded = (out / "model.safetensors.index.json").is_file()
    return [
        "config.json",
        "model.safetensors.index.json" if sharded else "model.safetensors",
        "preprocessor_config.json",
    ]


def check_complete(out: Path) -> None:
    """A run directory a reader can trust: every file its kind needs is there and not empty."""
    if not out.is_dir():
        raise UserError(f"{out} is not a directory: pass the --output-dir of a run")
    if not (out / "config.json").is_file() and not (out / ADAPTER_CONFIG).is_file():
        raise UserError(f"{out} is not an imgtune output directory (no config.json): pass the --output-dir of a run")
    if (out / "pytorch_model.bin").is_file() and not (out / "model.safetensors").is_file():
        raise UserError(
            f"{out} holds pickled weights (pytorch_model.bin), which are not loaded (unpickling can "
            "run code): save the model with safetensors (save_pretrained does by default)"
        )
    missing = [name for name in required_files(out) if not (out / name).is_file() or not (out / name).stat().st_size]
    if missing:
        raise UserError(
            f"{out} is an incomplete run directory: {', '.join(missing)} missing or empty; "
            "train it again (or copy the whole directory)"
        )


def save_run(out: Path, model: torch.nn.Module, processor, method: Method) -> None:
    out.mkdir(parents=True, exist_ok=True)
    method.save(model, out)  # peft: adapter only; plain model: full weights
    if isinstance(model, peft.PeftModel):
        base_model(model).config.save_pretrained(out)  # label maps for inference
    processor.save_pretrained(out)


def adapter_bytes(out: Path) -> int:
    """Size on disk of what has to be shipped besides the base model."""
    names = [ADAPTER_WEIGHTS] if (out / ADAPTER_WEIGHTS).exists() else [p.name for p in out.glob("*.safetensors")]
    return sum((out / n).stat().st_size for n in names)


def method_of(out: Path) -> Method:
    """The method a run was trained with: imgtune.yaml says; a bare peft adapter is named by its type."""
    recorded = recorded_settings(out).get("method")
    if not isinstance(recorded, str) and (out / ADAPTER_CONFIG).is_file():
        recorded = str(read_json_config(out, ADAPTER_CONFIG, peft.PeftConfig.from_pretrained).peft_type.value).lower()
    return METHODS.get(recorded, METHODS["lora"]) if isinstance(recorded, str) else METHODS["lora"]


def recorded_settings(out: Path) -> dict:
    """The run's imgtune.yaml as a mapping ({} when there is none); malformed is one line naming it."""
    if not (out / RUN_CONFIG).is_file():
        return {}
    try:
        data = yaml.safe_load((out / RUN_CONFIG).read_text())
    except yaml.YAMLError as err:
        raise UserError(
            f"{out / RUN_CONFIG} is not valid YAML ({str(err).splitlines()[0]}): the run is damaged"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{out / RUN_CONFIG} must hold a mapping of settings, got {type(data).__name__}")
    return data


def labels_of(config) -> list[str]:
    return [str(config.id2label[i]) for i in range(config.num_labels)]


def check_head_size(out: Path, num_labels: int) -> None:
    """An adapter whose head disagrees with config.json's label count loads into a wrong head: refuse."""
    with safe_open(str(out / ADAPTER_WEIGHTS), framework="pt") as f:
        for key in f.keys():
            parts = key.split(".")
            if (
                key.endswith(".weight")
                and any(h in parts for h in HEAD_NAMES)
                and len(f.get_slice(key).get_shape()) == 2
            ):
                rows = f.get_slice(key).get_shape()[0]
                if rows != num_labels:
                    raise UserError(
                        f"adapter in {out} has a {rows}-class head but its config.json lists {num_labels} labels: "
                        "re-save the run's config.json or retrain"
                    )


def read_json_config(out: Path, name: str, reader: Callable):
    """A library's reader of one of the run's JSON files; a malformed file is one line naming it."""
    try:
        return reader(out)
    except (ValueError, TypeError, KeyError, OSError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(f"{out / name} cannot be read ({first}): the run directory is damaged") from None


def recorded_base(out: Path, base: str | None) -> str:
    """The base model an adapter run loads onto: ``base`` when given (the same model moved or copied),
    else the one recorded at training time, which must still be there."""
    if base is not None:
        if looks_like_path(base):
            check_model_files(base)
        return base
    recorded = read_json_config(out, ADAPTER_CONFIG, peft.PeftConfig.from_pretrained).base_model_name_or_path
    if recorded and recorded.startswith("/") and Path(recorded).is_dir():
        check_model_files(recorded)
    elif recorded and recorded.startswith("/"):
        raise UserError(
            f"{out} was trained on {recorded}, which is not there any more: pass --base with the "
            "directory (or hub id) of the same model"
        )
    return recorded


def load_run(path: str | Path, base: str | None = None) -> LoadedRun:
    """A run directory loaded for inference; ``base`` replaces an adapter run's recorded base model."""
    out = Path(path).expanduser()
    check_complete(out)
    config = read_json_config(out, "config.json", AutoConfig.from_pretrained)
    labels = labels_of(config)
    is_adapter = (out / ADAPTER_CONFIG).is_file()
    if is_adapter:
        check_head_size(out, len(labels))
        with method_of(out).quiet():
            model = peft.PeftModel.from_pretrained(load_base_model(recorded_base(out, base), labels), out)
    else:
        with quiet_transformers():
            model = AutoModelForImageClassification.from_pretrained(out)
    model.eval()
    return LoadedRun(model, AutoImageProcessor.from_pretrained(out), labels, is_adapter, out)
