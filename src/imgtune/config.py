"""One configuration object for a run, built from a YAML file (or preset) and flags.

Every stage (data, model, train, evaluate, compare) takes this object; nothing re-parses
arguments or reads globals.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from imgtune.errors import UserError

PRESETS_DIR = Path(__file__).parent / "configs"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BAD_FILE_POLICIES = ("skip", "strict")


def control(default: Any = None, **kwargs: Any) -> Any:
    """A setting that changes how a run is carried out but not what it learns: a resumed run may
    change it, and compare reuses a finished run whatever its value."""
    return field(default=default, metadata={"result": False}, **kwargs)


@dataclass
class TrainConfig:
    """Every setting of a run. Each field either shapes the result (the default) or only controls
    the run (``control``): ``result_settings`` is what resume and compare both compare."""

    # what to train
    model: str = "google/vit-base-patch16-224-in21k"
    dataset: str = "food101"
    method: str = "lora"
    # adapter shape; None means "the method's ViT default" (imgtune.tuning.methods)
    rank: int | None = None
    alpha: float | None = None
    target_modules: list[str] | None = None
    dropout: float | None = None
    method_options: dict[str, Any] = field(default_factory=dict)
    # optimisation; None (and lr/precision "auto") means "fitted to the data, model and device when the
    # run starts" (imgtune.tuning.autoconfig): the resolved values are what the run records
    lr: float | str = 5e-3  # a number, or "auto": a learning-rate range test picks it
    epochs: int | None = None
    batch_size: int | None = None
    eval_batch_size: int | None = control()
    grad_accum: int = 1
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    # Trainer's default, which the seeds inherit: without it the same flags lost 3-9 points on a real task;
    # 0 (or null) turns clipping off
    max_grad_norm: float | None = 1.0
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
    hflip: bool | None = None
    crop_scale: list[float] | None = None
    # augmentation is seeded per sample (data.sampler.EpochSampler): any worker count gives the same run
    num_workers: int | None = control()
    bad_files: str = "skip"
    # confine a CSV's rows to this folder (rows outside are refused); without it, relative paths are read
    # from the CSV's folder and absolute ones as they are
    data_root: str | None = control()
    # cached images are pre-shrunk (other pixels), so whether there is a cache shapes the result
    # (result_settings keeps it as a yes/no); where it lives does not
    cache: str | None = None
    # output and bookkeeping
    # None: runs/<model>-<method>-<dataset>-<time>, a directory of the run's own (imgtune.preflight)
    output_dir: str | None = control()
    overwrite: bool = control(False)  # replace a finished run with other settings in output_dir
    logging_steps: int = control(10)
    report_to: str = control("auto")
    save_steps: int | None = control()
    save_total_limit: int | None = control(2)
    resume: str | None = control()
    push_to_hub: str | None = control()
    progress: bool = control(True)

    def __post_init__(self) -> None:
        for name in ("target_modules", "classes"):  # YAML's `target_modules: all-linear` or `classes: a,b`
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [v.strip() for v in value.split(",") if v.strip()])
        if isinstance(self.lr, str) and self.lr != "auto":
            self.lr = number_or_text(self.lr)  # PyYAML reads `lr: 5e-3` (no dot) as a string
        self.validate()

    def validate(self) -> None:
        check_types(self)
        check_ranges(self)
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")
        if self.bad_files not in BAD_FILE_POLICIES:
            raise UserError(f"unknown bad-file policy {self.bad_files!r}: use 'skip' or 'strict'")
        if self.lr != "auto" and (isinstance(self.lr, bool) or not isinstance(self.lr, (int, float))):
            raise UserError(f"setting lr must be a positive number or 'auto', got {self.lr!r}")
        if self.crop_scale is None:
            return
        numbers = len(self.crop_scale) == 2 and all(isinstance(v, (int, float)) for v in self.crop_scale)
        low, high = self.crop_scale if numbers else (None, None)
        if low is None or not 0 < low <= high <= 1:
            raise UserError(f"crop_scale must be two numbers 0 < low <= high <= 1, got {self.crop_scale}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def result_settings(self) -> dict[str, Any]:
        """The settings that shape what a run learns: two runs with equal ones compute the same model."""
        values = self.to_dict()
        settings = {f.name: values[f.name] for f in fields(self) if f.metadata.get("result", True)}
        settings["cache"] = bool(settings["cache"])
        return settings

    def with_auto_from(self, earlier: TrainConfig) -> TrainConfig:
        """These settings with the ones left to ``auto`` taken from ``earlier`` (a run records what its auto
        settings resolved to): how a rerun with the same flags recognises the run it would repeat."""
        return self.replace(**{k: getattr(earlier, k) for k, v in AUTO_FIELDS.items() if getattr(self, k) == v})

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# settings a run fits to its data, model and device when left at this value (imgtune.tuning.autoconfig)
AUTO_FIELDS: dict[str, Any] = {
    "epochs": None,
    "batch_size": None,
    "crop_scale": None,
    "hflip": None,
    "lr": "auto",
    "precision": "auto",
}


def number_or_text(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


# setting -> (lowest, highest, brackets): "[" / "]" include the bound, "(" / ")" exclude it;
# settings left at None are not checked
INF = math.inf
RANGES: dict[str, tuple[float, float, str]] = {
    **{
        name: (1, INF, "[)")
        for name in (
            "epochs",
            "batch_size",
            "grad_accum",
            "eval_batch_size",
            "max_train_samples",
            "max_eval_samples",
            "logging_steps",
            "save_steps",
            "save_total_limit",
            "image_size",
            "rank",
        )
    },
    "num_workers": (0, INF, "[)"),
    "weight_decay": (0, INF, "[)"),
    "alpha": (0, INF, "()"),
    "lr": (0, INF, "()"),
    # a negative max norm would flip the gradients' sign inside clip_grad_norm_
    "max_grad_norm": (0, INF, "[)"),
    "dropout": (0, 1, "[)"),
    "warmup_ratio": (0, 1, "[)"),
    "val_fraction": (0, 1, "()"),
    "test_fraction": (0, 1, "()"),
    "test_from_validation": (0, 1, "()"),
}
# what people bring from Trainer scripts and peft configs
ALIASES = {
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "num_epochs": "epochs",
    "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "r": "rank",
    "lora_r": "rank",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "model_name_or_path": "model",
    "fp16": "precision",
    "bf16": "precision",
}
SIMPLE_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}
TYPE_WORDS = {
    "int": "a whole number",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "list[str]": "a list",
    "list[float]": "a list of numbers",
    "dict[str, Any]": "a mapping",
}


def check_types(cfg: TrainConfig) -> None:
    """Name the setting whose value has the wrong type (YAML's ``epochs: two``), before anything compares it."""
    for f in fields(cfg):
        value, annotation = getattr(cfg, f.name), str(f.type)
        if value is None and "None" in annotation:
            continue
        base = annotation.replace(" | None", "")
        kinds = SIMPLE_TYPES.get(
            base, (list,) if base.startswith("list") else (dict,) if base.startswith("dict") else None
        )
        if kinds is None:
            continue
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            raise UserError(f"setting {f.name} must be {TYPE_WORDS.get(base, base)}, got {value!r}")


def check_ranges(cfg: TrainConfig) -> None:
    for name, (low, high, brackets) in RANGES.items():
        value = getattr(cfg, name)
        if value is None or isinstance(value, str):  # "auto" (lr): validate() checks the words
            continue
        above = low <= value if brackets[0] == "[" else low < value
        below = value <= high if brackets[1] == "]" else value < high
        if not (above and below):
            if high == INF:
                bound = f"at least {low}" if brackets[0] == "[" else f"above {low}"
            else:
                bound = f"in {brackets[0]}{low}, {high}{brackets[1]}"
            raise UserError(f"--{name.replace('_', '-')} must be {bound}, got {value}")


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
    raise UserError(f"config {name_or_path!r} is neither a file nor a preset: presets are {', '.join(list_presets())}")


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
        hints = [
            f"{name} (did you mean {close[0]}?)"
            if (close := [ALIASES[name]] if name in ALIASES else difflib.get_close_matches(name, known, n=1))
            else name
            for name in unknown
        ]
        raise UserError(
            f"unknown setting(s) {', '.join(hints)} in config: the settings are the fields of "
            "`imgtune train --help` with underscores (batch_size for --batch-size)"
        )
    try:
        return TrainConfig(**values)
    except TypeError as err:
        raise UserError(f"bad config: {err}") from None
