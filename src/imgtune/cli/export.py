"""``imgtune export``: ONNX (adapter merged), optionally int8-quantized."""

from __future__ import annotations

import argparse
import json

from imgtune.cli.common import add_base_flag

EXAMPLES = (
    "imgtune export runs/photos --onnx export/photos.onnx",
    "imgtune export runs/photos --onnx export/photos.onnx --int8 --dataset photos-test/",
)


def add_command(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a run to ONNX (adapter merged), optionally int8-quantized")
    p.add_argument("output_dir", help="a trained run (adapter or full)")
    p.add_argument("--onnx", required=True, help="path of the .onnx file to write")
    p.add_argument("--int8", action="store_true", help="also write FILE.int8.onnx with dynamic int8 quantization")
    p.add_argument("--dataset", help="with --int8: measure fp32 vs int8 ONNX accuracy on this dataset")
    p.add_argument("--split", help="split of --dataset (default: test, else validation)")
    add_base_flag(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from imgtune.inference.export import export

    s = export(args.output_dir, args.onnx, args.int8, args.dataset, args.split, args.base)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"ONNX model saved to {s['onnx']} (onnxruntime matches torch within {s['max_abs_diff']:.1e})")
    if "int8" in s:
        print(
            f"int8 model saved to {s['int8']} ({s['int8_bytes'] / 1e6:.2f} MB vs {s['fp32_bytes'] / 1e6:.2f} MB fp32)"
        )
    if "int8_accuracy" in s:
        print(
            f"accuracy on {s['accuracy_count']} images: fp32 {s['fp32_accuracy']:.4f}, int8 {s['int8_accuracy']:.4f} "
            f"(change {s['accuracy_change']:+.4f})"
        )
    return 0
