"""``imgtune presets``: the bundled configs."""

from __future__ import annotations

import argparse

from imgtune.config import PRESETS_DIR, list_presets

EXAMPLES = (
    "imgtune presets",
    "imgtune train --config food101-lokr --dataset photos/",
)


def add_command(subparsers) -> None:
    subparsers.add_parser("presets", help="list bundled config presets").set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name in list_presets():
        first = (PRESETS_DIR / f"{name}.yaml").read_text().splitlines()[0].lstrip("# ")
        print(f"{name:28} {first}")
    return 0
