"""``imgtune demo``: the whole life of an adapter, offline, on scikit-learn's digits."""

from __future__ import annotations

import argparse

EXAMPLES = (
    "imgtune demo",
    "imgtune demo --output-dir /tmp/demo",
)


def add_command(subparsers) -> None:
    p = subparsers.add_parser("demo", help="offline end-to-end run on scikit-learn's digits")
    p.add_argument("--output-dir", default="imgtune-demo", help="where the demo's runs and images go")
    p.add_argument("--epochs", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from imgtune.demo import run_demo

    run_demo(args.output_dir, epochs=args.epochs)
    return 0
