"""``imgtune compare``: train several methods on the same data and write one report."""

from __future__ import annotations

import argparse
from pathlib import Path

from imgtune.cli.common import add_train_flags, config_from_args, csv_list
from imgtune.errors import UserError

EXAMPLES = (
    "imgtune compare --demo --methods lora,loha,lokr",
    "imgtune compare --config food101-lora-subset --methods lora,adalora --output-dir runs/cmp",
)


def add_command(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="train several methods on the same data and write a comparison report",
        description="Train each method on the same data, split and seed into OUTPUT_DIR/<method>/, "
        "then write OUTPUT_DIR/report.md and a self-contained OUTPUT_DIR/report.html. "
        "Re-running skips methods already finished with the same settings.",
    )
    p.add_argument(
        "--methods",
        type=csv_list,
        default=None,
        help="comma-separated methods to compare (default: all; see `imgtune methods`)",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="offline: the demo's backbone and digits 5-9 (default --output-dir imgtune-compare-demo)",
    )
    p.add_argument("--rerun", action="store_true", help="train every method again, even those already finished")
    add_train_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if "method" in vars(args):
        raise UserError("compare takes --methods (comma-separated, e.g. lora,loha), not --method")
    from imgtune.compare.runner import DEFAULT_OUTPUT, DEMO_OUTPUT, Plan, compare, demo_plan
    from imgtune.tuning.methods import METHODS, get_method

    if args.methods is not None and not args.methods:  # `--methods ""` or `--methods ,`
        raise UserError("--methods is empty: name at least one method, e.g. lora,loha")
    methods = args.methods or list(METHODS)
    if len(set(methods)) != len(methods):
        raise UserError(f"--methods lists a method twice: {','.join(methods)}")
    for name in methods:
        get_method(name)  # an unknown name fails before the demo backbone or any method trains
    extra = ("methods", "demo", "rerun")
    if args.demo:
        if args.config:
            raise UserError("--demo brings its own model and data: drop --config, or drop --demo and pass --config")
        out = Path(getattr(args, "output_dir", DEMO_OUTPUT))
        overrides = {
            k: v for k, v in vars(args).items() if k not in ("config", "command", "func", "output_dir", *extra)
        }
        shared = demo_plan(out, overrides)
        title = "imgtune compare: demo (digits 5-9 on a ViT trained on digits 0-4)"
    else:
        shared = config_from_args(args, exclude=extra)
        out = Path(shared.output_dir or DEFAULT_OUTPUT)  # flag or YAML, else compare's own default
        title = f"imgtune compare: {Path(shared.dataset).name} on {Path(shared.model).name}"
    runs = compare(Plan(shared, methods, out, title, args.rerun))
    failed = [r for r in runs if r.metrics is None]
    if failed:
        raise UserError(
            f"{len(failed)} of {len(runs)} methods did not finish: "
            + "; ".join(f"{r.name} ({r.error})" for r in failed)
        )
    return 0
