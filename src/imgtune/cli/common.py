"""Flag types and flag sets shared by several commands."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import MISSING, fields

from imgtune.config import PRECISIONS, TrainConfig, load_config


def csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def crop_scale(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("expected two numbers, e.g. 0.08,1.0") from None
    if len(values) != 2:
        raise argparse.ArgumentTypeError("expected two numbers, e.g. 0.08,1.0")
    return values


def learning_rate(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number (5e-3) or 'auto'") from None


def json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


# flag -> (type, help); the config field is the flag name with dashes as underscores
TRAIN_FLAGS: dict[str, tuple[Callable | None, str]] = {
    "--model": (str, "hub id or local directory of a pretrained image classifier"),
    "--dataset": (str, "hub id (food101, food101:train[:5000]), image folder, CSV of path,label, or 'digits'"),
    "--method": (str, "fine-tuning method: lora (default), loha, lokr, adalora, ... (`imgtune methods` lists all)"),
    "--rank": (int, "adapter rank (method default when omitted)"),
    "--alpha": (float, "adapter scaling alpha"),
    "--target-modules": (csv_list, "comma-separated module names (query,value or q_proj,v_proj) or all-linear"),
    "--dropout": (float, "adapter dropout"),
    "--method-options": (json_dict, "extra peft config values as JSON, e.g. '{\"init_r\": 12}'"),
    "--lr": (learning_rate, "learning rate, or auto: a range test on a copy of the model picks it (lr_find.png)"),
    "--epochs": (int, "number of epochs (default: enough for about 1000 optimizer steps, 5 to 50)"),
    "--batch-size": (int, "images per batch per process (default: 128 on a GPU, 32 on a CPU, less for small data)"),
    "--eval-batch-size": (int, "images per evaluation batch"),
    "--grad-accum": (int, "gradient accumulation steps"),
    "--weight-decay": (float, "AdamW weight decay"),
    "--warmup-ratio": (float, "fraction of steps with linear warm-up"),
    "--max-grad-norm": (float, "clip gradients to this norm"),
    "--precision": (str, "auto (GPU: bf16/fp16; CPU: the faster of fp32 and bf16, timed), fp32, bf16 or fp16"),
    "--seed": (int, "random seed for splits, order and initialisation"),
    "--output-dir": (str, "where the adapter, metrics and logs go"),
    "--num-workers": (int, "data loader processes (default: one per core for large sets)"),
    "--max-train-samples": (int, "use at most this many training images"),
    "--max-eval-samples": (int, "use at most this many validation/test images"),
    "--image-column": (str, "dataset column with the images (detected when omitted)"),
    "--label-column": (str, "dataset column with the labels (detected when omitted)"),
    "--train-split": (str, "split to train on (default train)"),
    "--validation-split": (str, "split to validate on (default validation, else carved from train)"),
    "--test-split": (str, "split to test on (default test if present)"),
    "--val-fraction": (float, "fraction of train carved out for validation when there is none (0.1)"),
    "--test-fraction": (float, "fraction of train carved out for test when there is none"),
    "--test-from-validation": (float, "split validation into validation and test, e.g. 0.3"),
    "--classes": (csv_list, "train on these classes only, comma-separated"),
    "--image-size": (int, "input size (default: the processor's)"),
    "--crop-scale": (
        crop_scale,
        "RandomResizedCrop's area range as LOW,HIGH (default: 0.08,1.0 for large images, higher for small ones)",
    ),
    "--bad-files": (str, "skip (default) or strict"),
    "--cache": (str, "directory for a preprocessed image cache"),
    "--data-root": (str, "refuse CSV rows that point outside this folder"),
    "--logging-steps": (int, "log the training loss every N optimizer steps"),
    "--report-to": (str, "auto (tensorboard if installed), tensorboard, wandb, mlflow or none"),
    "--save-steps": (int, "also checkpoint every N optimizer steps"),
    "--save-total-limit": (int, "keep this many recent checkpoints (plus the best)"),
    "--resume": (str, "auto (newest complete checkpoint in --output-dir) or a checkpoint path"),
    "--push-to-hub": (str, "push the adapter to this hub repo after training"),
}


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file or preset name (see `imgtune presets`)")
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for flag, (kind, text) in TRAIN_FLAGS.items():
        default = defaults.get(flag[2:].replace("-", "_"))
        # flags stay unset unless given (a --config file's value must win over a default), so the help
        # says TrainConfig's default itself
        shown = f"{text} (default: {default})" if default not in (None, MISSING) else text
        parser.add_argument(flag, type=kind, help=shown.replace("%", "%%"), default=argparse.SUPPRESS)
    parser.add_argument(
        "--strict",
        dest="bad_files",
        action="store_const",
        const="strict",
        default=argparse.SUPPRESS,
        help="fail before training if any image is unreadable",
    )
    parser.add_argument(
        "--no-hflip",
        dest="hflip",
        action="store_false",
        default=argparse.SUPPRESS,
        help="no horizontal flips (text, digits, anything with a handedness)",
    )
    parser.add_argument(
        "--hflip",
        dest="hflip",
        action="store_true",
        default=argparse.SUPPRESS,
        help="horizontal flips even where the training images do not look the same in a mirror "
        "(default: decided from the data)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        default=argparse.SUPPRESS,
        help="replace a finished run with other settings in --output-dir",
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=argparse.SUPPRESS,
        help="no progress bars (logs and CI)",
    )


def config_from_args(args: argparse.Namespace, exclude: tuple[str, ...] = ()) -> TrainConfig:
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "command", "func", *exclude)}
    return load_config(args.config, **overrides)


def add_base_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base",
        default=None,
        help="the base model (directory or hub id) to load an adapter run onto, when the one it was trained on "
        "has moved (default: the one recorded in the run)",
    )


def add_inference_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the GPU if there is one)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 on GPUs and on CPUs with native bf16 (AMX/AVX512-BF16), else fp32",
    )
