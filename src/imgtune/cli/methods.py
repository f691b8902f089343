"""``imgtune methods``: the registry's methods and their ViT defaults."""

from __future__ import annotations

import argparse

EXAMPLES = (
    "imgtune methods",
    "imgtune train --method pissa --dataset photos/ --model ./my-vit",
)


def add_command(subparsers) -> None:
    subparsers.add_parser("methods", help="list fine-tuning methods and their defaults").set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from imgtune.tuning.methods import METHODS

    for m in METHODS.values():
        shape = f"rank {m.rank}, targets {','.join(m.target_modules)}" if m.is_adapter else "no adapter"
        print(f"{m.name:8} {m.summary} ({shape})")
    return 0
