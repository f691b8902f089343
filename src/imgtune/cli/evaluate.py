"""``imgtune evaluate``: score a trained run on a dataset split."""

from __future__ import annotations

import argparse
import json
import sys

from imgtune.cli.common import add_base_flag, add_inference_flags

EXAMPLES = (
    "imgtune evaluate runs/photos                      # the run's own held-out split",
    "imgtune evaluate runs/photos --dataset photos-test/ --json",
)


def add_command(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate a trained run on a dataset split")
    p.add_argument("output_dir", help="a trained run (its --output-dir)")
    p.add_argument(
        "--dataset",
        default=None,
        help="hub id, image folder, CSV or 'digits' (default: the run's own held-out split, made again from "
        "its recorded settings)",
    )
    p.add_argument("--split", default=None, help="default: test, else validation, else the only split")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--num-workers", type=int, default=None, help="data loader processes")
    p.add_argument("--image-column", help="dataset column with the images (detected when omitted)")
    p.add_argument("--label-column", help="dataset column with the labels (detected when omitted)")
    p.add_argument("--strict", action="store_true", help="fail if any image is unreadable")
    p.add_argument("--cache", help="directory for a preprocessed image cache (shared with train's --cache)")
    add_inference_flags(p)
    add_base_flag(p)
    p.add_argument("--json", action="store_true", help="print all metrics as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from imgtune.inference.evaluate import evaluate

    metrics = evaluate(
        args.output_dir,
        args.dataset,
        args.split,
        args.batch_size,
        args.num_workers,
        "strict" if args.strict else "skip",
        args.image_column,
        args.label_column,
        not args.json,
        device=args.device,
        precision=args.precision,
        cache=args.cache,
        base=args.base,
    )
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    print(
        f"accuracy {metrics['accuracy']:.4f}  top-5 {metrics['top5']:.4f}  loss {metrics['loss']:.4f}  "
        f"on {metrics['count']:,} images ({scored(metrics)})"
    )
    if metrics["bad_files"]:
        print(f"skipped {metrics['bad_files']} unreadable image(s)", file=sys.stderr)
    return 0


def scored(metrics: dict) -> str:
    split = metrics["split"]
    return f"{split} of {metrics['dataset']}" if split == "all images" else f"{split} split of {metrics['dataset']}"
