"""``imgtune train``: fine-tune a model with a method, from a preset or YAML file plus flags."""

from __future__ import annotations

import argparse

from imgtune.cli.common import add_train_flags, config_from_args
from imgtune.preflight import preflight

EXAMPLES = (
    "imgtune train --config food101-lora --dataset photos/ --epochs 3 --output-dir runs/photos",
    "imgtune train --model ./my-vit --dataset data.csv --method loha --rank 8 --no-hflip",
    "imgtune train --config runs/photos/imgtune.yaml --resume auto",
)


def add_command(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune a model with an adapter",
        description="Fine-tune a pretrained image classifier; flags override --config.",
    )
    add_train_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = preflight(config_from_args(args))  # mistakes found before torch and the model load
    from imgtune.tuning.recipe import train

    train(cfg)
    return 0
