"""``imgtune`` command line: a thin layer that builds a TrainConfig and calls the Python API.

User mistakes (UserError) become one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import warnings
from typing import Callable

from .config import PRECISIONS
from .errors import UserError


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
    "--method": (str, "lora, dora, loha, lokr, adalora, vera, oft, boft, ia3, full or linear"),
    "--rank": (int, "adapter rank (method default when omitted)"),
    "--alpha": (float, "adapter scaling alpha"),
    "--target-modules": (csv_list, "comma-separated module names (query,value or q_proj,v_proj) or all-linear"),
    "--dropout": (float, "adapter dropout"),
    "--method-options": (json_dict, "extra peft config values as JSON, e.g. '{\"init_r\": 12}'"),
    "--lr": (float, "learning rate"),
    "--epochs": (int, "number of epochs"),
    "--batch-size": (int, "images per batch per process"),
    "--eval-batch-size": (int, "images per evaluation batch"),
    "--grad-accum": (int, "gradient accumulation steps"),
    "--weight-decay": (float, "AdamW weight decay"),
    "--warmup-ratio": (float, "fraction of steps with linear warm-up"),
    "--max-grad-norm": (float, "clip gradients to this norm"),
    "--precision": (str, "auto, fp32, bf16 or fp16"),
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
    "--crop-scale": (crop_scale, "RandomResizedCrop's area range as LOW,HIGH (default 0.08,1.0)"),
    "--bad-files": (str, "skip (default) or strict"),
    "--cache": (str, "directory for a preprocessed image cache"),
    "--logging-steps": (int, "log the training loss every N optimizer steps"),
    "--report-to": (str, "auto (tensorboard if installed), tensorboard, wandb, mlflow or none"),
    "--save-steps": (int, "also checkpoint every N optimizer steps"),
    "--save-total-limit": (int, "keep this many recent checkpoints (plus the best)"),
    "--resume": (str, "auto (newest complete checkpoint in --output-dir) or a checkpoint path"),
    "--push-to-hub": (str, "push the adapter to this hub repo after training"),
}


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file or preset name (see `imgtune presets`)")
    for flag, (kind, text) in TRAIN_FLAGS.items():
        parser.add_argument(flag, type=kind, help=text, default=argparse.SUPPRESS)
    parser.add_argument("--strict", dest="bad_files", action="store_const", const="strict", default=argparse.SUPPRESS,
                        help="fail before training if any image is unreadable")
    parser.add_argument("--no-hflip", dest="hflip", action="store_false", default=argparse.SUPPRESS,
                        help="no horizontal flips (text, digits, anything with a handedness)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace, exclude: tuple[str, ...] = ()):
    from .config import load_config

    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "command", "func", *exclude)}
    return load_config(args.config, **overrides)


# --- commands ------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    train(config_from_args(args))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    metrics = evaluate(args.output_dir, args.dataset, args.split, args.batch_size, args.num_workers,
                       "strict" if args.strict else "skip", args.image_column, args.label_column, not args.json,
                       device=args.device, precision=args.precision, cache=args.cache)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(f"accuracy {metrics['accuracy']:.4f}  top-5 {metrics['top5']:.4f}  loss {metrics['loss']:.4f}  "
              f"on {metrics['count']:,} images")
        if metrics["bad_files"]:
            print(f"skipped {metrics['bad_files']} unreadable image(s)", file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict

    results, skipped = predict(args.output_dir, args.images, args.top_k, args.batch_size,
                               "strict" if args.strict else "skip", precision=args.precision, device=args.device)
    if args.json:
        print(json.dumps({"results": results, "skipped": skipped}, indent=2))
    else:
        for res in results:
            best = res["predictions"][0]
            others = ", ".join(f"{p['label']} {p['score']:.3f}" for p in res["predictions"][1:])
            print(f"{res['image']}: {best['label']} ({best['score']:.3f})" + (f"  [{others}]" if others else ""))
    for s in skipped:
        print(f"skipped {s['image']}: {s['error']}", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.output_dir, epochs=args.epochs)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from .config import PRESETS_DIR, list_presets

    for name in list_presets():
        first = (PRESETS_DIR / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
        print(f"{name:28} {first}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from .methods import METHODS

    for m in METHODS.values():
        shape = f"rank {m.rank}, targets {','.join(m.target_modules)}" if m.is_adapter else "no adapter"
        print(f"{m.name:8} {m.summary} ({shape})")
    return 0


def add_inference_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the GPU if there is one)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: bf16 on GPUs and on CPUs with native bf16 (AMX/AVX512-BF16), else fp32")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgtune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune a model with an adapter")
    add_train_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a trained run on a dataset split")
    p.add_argument("output_dir")
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default=None, help="default: test, else validation, else the only split")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--image-column")
    p.add_argument("--label-column")
    p.add_argument("--strict", action="store_true", help="fail if any image is unreadable")
    p.add_argument("--cache", help="directory for a preprocessed image cache (shared with train's --cache)")
    add_inference_flags(p)
    p.add_argument("--json", action="store_true", help="print all metrics as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify images or folders of images")
    p.add_argument("output_dir")
    p.add_argument("images", nargs="+")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--strict", action="store_true", help="fail if any image in a folder is unreadable")
    add_inference_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo", help="offline end-to-end run on scikit-learn's digits")
    p.add_argument("--output-dir", default="imgtune-demo")
    p.add_argument("--epochs", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_demo)

    sub.add_parser("presets", help="list bundled config presets").set_defaults(func=cmd_presets)
    sub.add_parser("methods", help="list fine-tuning methods and their defaults").set_defaults(func=cmd_methods)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_command(sub)
    return parser


# Commands that live in their own modules: each has ``add_command(subparsers)`` and keeps
# its heavy imports inside the command function, so ``imgtune --help`` stays quick.
COMMAND_MODULES: tuple[str, ...] = (
    "imgtune.compare",
    "imgtune.merge",
    "imgtune.export",
    "imgtune.serve",
)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our own warnings (an AdaLoRA schedule scaled to a short run, ...) are messages to the user:
    one line, without the source line a library warning shows."""
    ours = os.path.dirname(os.path.abspath(filename)) == os.path.dirname(os.path.abspath(__file__))
    text = f"imgtune: warning: {message}\n" if ours else warnings.formatwarning(message, category, filename, lineno, line)
    (file or sys.stderr).write(text)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.showwarning = show_warning
    # deprecation notices raised inside transformers/peft are for their authors, not our users
    warnings.filterwarnings("ignore", category=FutureWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"imgtune: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a path that cannot be read or written (exists as a file, no permission, no space)
        where = f": {err.filename}" if err.filename else ""
        print(f"imgtune: error: {err.strerror or err}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("imgtune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
