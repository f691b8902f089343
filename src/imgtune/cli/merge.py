"""``imgtune merge``: fold an adapter into its base and save a plain transformers model."""

from __future__ import annotations

import argparse

from imgtune.cli.common import add_base_flag

EXAMPLES = ("imgtune merge runs/photos --to runs/photos-merged",)


def add_command(subparsers) -> None:
    p = subparsers.add_parser("merge", help="merge an adapter into its base model and save a plain model")
    p.add_argument("output_dir", help="a trained adapter run")
    p.add_argument("--to", required=True, help="directory for the merged transformers model")
    add_base_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from imgtune.inference.merge import merge

    target = merge(args.output_dir, args.to, args.base)
    print(f"merged model saved to {target} (load with AutoModelForImageClassification.from_pretrained)")
    return 0
