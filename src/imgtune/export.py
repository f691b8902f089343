"""``imgtune export``: ONNX export of a run (adapter merged in memory), optional int8 quantization.

The ONNX graph takes ``pixel_values`` exactly as transformers does (float NCHW, already normalised
with the processor's mean/std; the processor config is saved beside it) and returns ``logits``;
the batch axis is dynamic.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import warnings
from pathlib import Path

from .errors import UserError

OPSET = 17


def require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as err:
        raise UserError(f"ONNX export needs onnx and onnxruntime ({err.name} is missing): "
                        'pip install -e ".[export]"') from None
    return onnxruntime


def logits_only(model):
    """transformers returns a ModelOutput; the exported graph should have one plain output."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).logits

    return LogitsOnly().eval()


def plain_model(out: str | Path):
    """(plain model, processor, labels): merged in memory for adapters, as saved for full/linear runs."""
    from .merge import merged_model
    from .output import labels_of, load_run

    run = load_run(out)
    if not run.is_adapter:
        return run.model.eval(), run.processor, run.labels
    model, processor = merged_model(out)
    return model, processor, labels_of(model.config)


def session(path: Path):
    ort = require_onnx()
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def onnx_logits(sess, pixels):
    import numpy as np

    return sess.run(["logits"], {"pixel_values": pixels.astype(np.float32)})[0]


LABELS_FILE = "labels.json"


def side_files(processor, labels: list[str]) -> dict[str, bytes]:
    """What is written next to the .onnx file, by name: the processor config (mean/std/size for whoever
    feeds the graph) and labels.json. The names are fixed, so one folder holds one model's."""
    with tempfile.TemporaryDirectory() as tmp:
        processor.save_pretrained(tmp)
        files = {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}
    return {LABELS_FILE: json.dumps(labels, indent=1).encode(), **files}


def same_content(old: bytes, new: bytes) -> bool:
    try:
        return json.loads(old) == json.loads(new)  # the same settings, whatever the formatting
    except ValueError:
        return old == new


def check_side_files(folder: Path, files: dict[str, bytes]) -> None:
    """Refuse to replace another model's labels/processor config: its .onnx file would be left beside
    this model's. The same content (re-exporting the same run, or a model with the same labels and
    preprocessing) is fine."""
    clashes = []
    for name, content in files.items():
        target = folder / name
        if not target.exists():
            continue
        try:
            old = target.read_bytes()
        except OSError:  # a folder of that name, unreadable: not ours to replace either
            old = None
        if old is None or not same_content(old, content):
            clashes.append(name)
    if clashes:
        raise UserError(f"{folder} already holds {' and '.join(clashes)} of another model: export each model "
                        f"into its own folder (or delete {'them' if len(clashes) > 1 else 'it'} first)")


def cannot_write(path: Path, err: OSError) -> UserError:
    where = f"{err.filename}: " if err.filename and str(err.filename) != str(path) else ""
    return UserError(f"cannot write {path} ({where}{err.strerror or err}): pass --onnx a path in a folder "
                     "you can write to")


def export_onnx(out: str | Path, onnx_path: str | Path) -> dict:
    """Write the ONNX file and check it against torch on two batch sizes; returns a summary."""
    import numpy as np
    import torch

    require_onnx()
    path = Path(onnx_path).expanduser()
    if path.is_dir():
        raise UserError(f"--onnx {onnx_path} is a folder: give the path of the file to write, e.g. {path / 'model.onnx'}")
    model, processor, labels = plain_model(out)
    from .transforms import ImageSpec

    spec = ImageSpec.from_processor(processor)
    files = side_files(processor, labels)
    check_side_files(path.parent, files)  # before anything is written
    example = torch.randn(2, 3, spec.size, spec.size)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # dynamo=False: the TorchScript exporter traces a ViT to a single self-contained .onnx file with a
        # dynamic batch axis in one call; the dynamo exporter in this torch version needs onnxscript (not a
        # dependency here) and writes external-data files for the same graph.
        with warnings.catch_warnings():
            # the tracer warns about transformers' shape checks, which are constant for a fixed image size
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(logits_only(model), (example,), str(path), input_names=["pixel_values"],
                              output_names=["logits"], dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=OPSET, dynamo=False)
        for name, content in files.items():
            (path.parent / name).write_bytes(content)
    except OSError as err:
        raise cannot_write(path, err) from None
    sess = session(path)
    worst = 0.0
    for n in (1, 3):  # a batch size that was not the traced one proves the axis is dynamic
        pixels = torch.randn(n, 3, spec.size, spec.size)
        with torch.no_grad():
            expected = model(pixel_values=pixels).logits.numpy()
        worst = max(worst, float(np.abs(onnx_logits(sess, pixels.numpy()) - expected).max()))
    if worst > 1e-3:
        raise RuntimeError(f"ONNX logits differ from torch by {worst:.2e}")
    return {"onnx": str(path), "max_abs_diff": worst, "labels": labels, "image_size": spec.size}


def quantize(onnx_path: Path, int8_path: Path) -> Path:
    require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # its "run pre-processing first" advice is logged on the root logger at WARNING for every call;
    # shape inference pre-processing matters for static quantization, not for dynamic int8 weights
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(onnx_path), str(int8_path), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return int8_path


def onnx_accuracy(onnx_files: dict[str, Path], out: str | Path, dataset: str, split: str | None,
                  batch_size: int = 64) -> dict[str, float]:
    """Top-1 accuracy of each ONNX file on a dataset split, with imgtune's eval preprocessing."""
    from .data import load_eval_split
    from .loader import ImageDataset, make_loader
    from .output import load_run
    from .transforms import BatchNormalizer, ImageSpec, eval_transform

    run = load_run(out)
    ds = load_eval_split(dataset, split, run.labels, None, None)
    spec = ImageSpec.from_processor(run.processor)
    normalize = BatchNormalizer(spec)
    sessions = {name: session(p) for name, p in onnx_files.items()}
    correct, count = {name: 0 for name in sessions}, 0
    for batch in make_loader(ImageDataset(ds, eval_transform(spec), spec.size), batch_size, False, 0, 0):
        if len(batch) == 0:
            continue
        pixels, labels = normalize(batch.pixel_values).numpy(), batch.labels.numpy()
        count += len(labels)
        for name, sess in sessions.items():
            correct[name] += int((onnx_logits(sess, pixels).argmax(1) == labels).sum())
    if not count:
        raise UserError(f"no readable images in {dataset} to measure accuracy on")
    return {name: c / count for name, c in correct.items()} | {"count": count}


def export(out: str | Path, onnx_path: str | Path, int8: bool = False, dataset: str | None = None,
           split: str | None = None) -> dict:
    if dataset and not int8:
        raise UserError("--dataset measures the int8 accuracy change: add --int8")
    summary = export_onnx(out, onnx_path)
    path = Path(summary["onnx"])
    if int8:
        int8_path = quantize(path, path.with_name(path.stem + ".int8.onnx"))
        summary["int8"] = str(int8_path)
        summary["int8_bytes"], summary["fp32_bytes"] = int8_path.stat().st_size, path.stat().st_size
        if dataset:
            acc = onnx_accuracy({"fp32": path, "int8": int8_path}, out, dataset, split)
            summary.update(fp32_accuracy=acc["fp32"], int8_accuracy=acc["int8"], accuracy_count=acc["count"],
                           accuracy_change=acc["int8"] - acc["fp32"])
    return summary


def cmd_export(args: argparse.Namespace) -> int:
    s = export(args.output_dir, args.onnx, args.int8, args.dataset, args.split)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"ONNX model saved to {s['onnx']} (onnxruntime matches torch within {s['max_abs_diff']:.1e})")
    if "int8" in s:
        print(f"int8 model saved to {s['int8']} ({s['int8_bytes'] / 1e6:.2f} MB vs {s['fp32_bytes'] / 1e6:.2f} MB fp32)")
    if "int8_accuracy" in s:
        print(f"accuracy on {s['accuracy_count']} images: fp32 {s['fp32_accuracy']:.4f}, int8 {s['int8_accuracy']:.4f} "
              f"(change {s['accuracy_change']:+.4f})")
    return 0


def add_command(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a run to ONNX (adapter merged), optionally int8-quantized")
    p.add_argument("output_dir", help="a trained run (adapter or full)")
    p.add_argument("--onnx", required=True, help="path of the .onnx file to write")
    p.add_argument("--int8", action="store_true", help="also write FILE.int8.onnx with dynamic int8 quantization")
    p.add_argument("--dataset", help="with --int8: measure fp32 vs int8 ONNX accuracy on this dataset")
    p.add_argument("--split", help="split of --dataset (default: test, else validation)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_export)
