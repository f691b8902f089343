"""``imgtune predict``: classify images or folders of images with a trained run."""

from __future__ import annotations

import argparse
import json
import sys

from imgtune.cli.common import add_base_flag, add_inference_flags

EXAMPLES = (
    "imgtune predict runs/photos cat.jpg more-photos/ --top-k 3",
    "imgtune predict runs/photos photos/ --json --base ./moved-vit",
)


def add_command(subparsers) -> None:
    p = subparsers.add_parser("predict", help="classify images or folders of images")
    p.add_argument("output_dir", help="a trained run (its --output-dir)")
    p.add_argument("images", nargs="+", help="image files and folders of images")
    p.add_argument("--top-k", type=int, default=5, help="labels to show per image")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch")
    p.add_argument("--strict", action="store_true", help="fail if any image in a folder is unreadable")
    add_inference_flags(p)
    add_base_flag(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from imgtune.inference.predict import predict

    results, skipped = predict(
        args.output_dir,
        args.images,
        args.top_k,
        args.batch_size,
        "strict" if args.strict else "skip",
        precision=args.precision,
        device=args.device,
        base=args.base,
    )
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
