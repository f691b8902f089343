"""One configuration object for a run, built from a YAML file (or preset) and flags.

Every stage (data, model, train, evaluate, compare) takes this object; nothing re-parses
arguments or reads globals.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

PRESETS_DIR = Path(__file__).parent / "configs"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BAD_FILE_POLICIES = ("skip", "strict")


@dataclass
class TrainConfig:
    # what to train
    model: str = "google/vit-base-patch16-224-in21k"
    dataset: str = "food101"
    method: str = "lora"
    # adapter shape; None means "the method's ViT default" (methods.py)
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] | None = None
    dropout: float | None = None
    method_options: dict[str, Any] = field(default_factory=dict)
    # optimisation
    lr: float = 5e-3
    epochs: int = 5
    batch_size: int = 128
    eval_batch_size: int | None = None
    grad_accum: int = 1
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    max_grad_norm: float | None = None
    precision: str = "auto"
    seed: int = 42
    # data
    train_split: str | None = None
    validation_split: str | None = None
    test_split: str | None = None
    val_fraction: float = 0.1
    test_from_validation: float | None = None
    test_fraction: float | None = None
    classes: list[str] | None = None
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    image_column: str | None = None
    label_column: str | None = None
    image_size: int | None = None
    hflip: bool = True
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    num_workers: int | None = None
    bad_files: str = "skip"
    cache: str | None = None
    # output and bookkeeping
    output_dir: str = "runs/imgtune"
    logging_steps: int = 10
    report_to: str = "auto"
    save_steps: int | None = None
    save_total_limit: int | None = 2
    resume: str | None = None
    push_to_hub: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")
        if self.bad_files not in BAD_FILE_POLICIES:
            raise UserError(f"unknown bad-file policy {self.bad_files!r}: use 'skip' or 'strict'")
        for name in ("epochs", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        if self.test_from_validation is not None and not 0 < self.test_from_validation < 1:
            raise UserError(f"--test-from-validation must be between 0 and 1, got {self.test_from_validation}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML path, or the name of a bundled preset (``food101-lora``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = PRESETS_DIR / f"{path.stem}.yaml"
    if preset.is_file() and path.suffix in ("", ".yaml", ".yml") and path.parent == Path("."):
        return preset
    raise UserError(
        f"config {name_or_path!r} is neither a file nor a preset: presets are {', '.join(list_presets())}"
    )


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def load_config(config: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Config from a YAML file or preset name, then keyword overrides (flags) on top."""
    values: dict[str, Any] = {}
    if config is not None:
        values.update(read_yaml(resolve_config_path(str(config))))
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"unknown setting(s) {', '.join(unknown)} in config: see README's config reference")
    try:
        return TrainConfig(**values)
    except TypeError as err:
        raise UserError(f"bad config: {err}") from None
