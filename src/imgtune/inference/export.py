"""``imgtune export``: ONNX export of a run (adapter merged in memory), optional int8 quantization.

The ONNX graph takes ``pixel_values`` exactly as transformers does (float NCHW, already normalised
with the processor's mean/std; the processor config is saved beside it) and returns ``logits``;
the batch axis is dynamic.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from imgtune.data.loading import make_loader
from imgtune.data.samples import ImageDataset
from imgtune.data.splits import load_eval_split
from imgtune.data.transforms import BatchNormalizer, ImageSpec, eval_transform
from imgtune.errors import UserError
from imgtune.inference.merge import merged_model
from imgtune.rundir import LoadedRun, labels_of, load_run
from imgtune.storage import check_free_space, existing_parent

OPSET = 17


def require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as err:
        raise UserError(
            f'ONNX export needs onnx and onnxruntime ({err.name} is missing): pip install -e ".[export]"'
        ) from None
    return onnxruntime


def logits_only(model):
    """transformers returns a ModelOutput; the exported graph should have one plain output."""

    class LogitsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            return self.model(pixel_values=pixel_values).logits

    return LogitsOnly().eval()


def plain_model(run: LoadedRun) -> tuple[torch.nn.Module, object, list[str]]:
    """(plain model, processor, labels): merged in memory for adapters, as saved for full/linear runs."""
    if not run.is_adapter:
        return run.model.eval(), run.processor, run.labels
    model = merged_model(run)
    return model, run.processor, labels_of(model.config)


def session(path: Path):
    ort = require_onnx()
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def onnx_logits(sess, pixels):
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
        raise UserError(
            f"{folder} already holds {' and '.join(clashes)} of another model: export each model "
            f"into its own folder (or delete {'them' if len(clashes) > 1 else 'it'} first)"
        )


def cannot_write(path: Path, err: OSError) -> UserError:
    where = f"{err.filename}: " if err.filename and str(err.filename) != str(path) else ""
    return UserError(
        f"cannot write {path} ({where}{err.strerror or err}): pass --onnx a path in a folder you can write to"
    )


def export_onnx(run: LoadedRun, onnx_path: str | Path) -> dict:
    """Write the ONNX file and check it against torch on two batch sizes; returns a summary."""
    require_onnx()
    path = Path(onnx_path).expanduser()
    if path.is_dir():
        raise UserError(
            f"--onnx {onnx_path} is a folder: give the path of the file to write, e.g. {path / 'model.onnx'}"
        )
    existing = existing_parent(path.parent)
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):  # before the model loads
        raise UserError(
            f"cannot write {path} ({existing} is not a writable directory): pass --onnx a path in a "
            "folder you can write to"
        )
    model, processor, labels = plain_model(run)
    spec = ImageSpec.from_processor(processor)
    files = side_files(processor, labels)
    check_side_files(path.parent, files)  # before anything is written
    example = torch.randn(2, 3, spec.size, spec.size)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the graph holds the weights in fp32: room for them (twice with --int8) before anything is written
        check_free_space(path.parent, 2 * 4 * sum(p.numel() for p in model.parameters()), "--onnx's folder")
        # dynamo=False: the TorchScript exporter traces a ViT to a single self-contained .onnx file with a
        # dynamic batch axis in one call; the dynamo exporter in this torch version needs onnxscript (not a
        # dependency here) and writes external-data files for the same graph.
        with warnings.catch_warnings():
            # the tracer warns about transformers' shape checks, which are constant for a fixed image size
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # torch deprecates this exporter in favour of the dynamo one (see above for why not yet);
            # a known decision, not news for every export
            warnings.filterwarnings(
                "ignore", message="You are using the legacy TorchScript-based ONNX export", category=DeprecationWarning
            )
            torch.onnx.export(
                logits_only(model),
                (example,),
                str(path),
                input_names=["pixel_values"],
                output_names=["logits"],
                dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
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
    """Dynamic int8 weights, after onnxruntime's own pre-processing (shape inference and graph
    optimisation, which it asks for on the root logger otherwise), done in a temporary file."""
    require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(onnx_path), str(prepared))
        quantize_dynamic(str(prepared), str(int8_path), weight_type=QuantType.QInt8)
    return int8_path


def onnx_accuracy(
    onnx_files: dict[str, Path], run: LoadedRun, dataset: str, split: str | None, batch_size: int = 64
) -> dict[str, float]:
    """Top-1 accuracy of each ONNX file on a dataset split, with imgtune's eval preprocessing."""
    _, ds = load_eval_split(dataset, split, run.labels, None, None)
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


def export(
    out: str | Path,
    onnx_path: str | Path,
    int8: bool = False,
    dataset: str | None = None,
    split: str | None = None,
    base: str | None = None,
) -> dict:
    """ONNX (and int8) files of a run, each checked; with ``dataset``, their accuracy on it."""
    if dataset and not int8:
        raise UserError("--dataset measures the int8 accuracy change: add --int8")
    run = load_run(out, base)  # read once: the merge, the export and the accuracy check share it
    summary = export_onnx(run, onnx_path)
    path = Path(summary["onnx"])
    if int8:
        int8_path = quantize(path, path.with_name(path.stem + ".int8.onnx"))
        summary["int8"] = str(int8_path)
        summary["int8_bytes"], summary["fp32_bytes"] = int8_path.stat().st_size, path.stat().st_size
        if dataset:
            acc = onnx_accuracy({"fp32": path, "int8": int8_path}, run, dataset, split)
            summary.update(
                fp32_accuracy=acc["fp32"],
                int8_accuracy=acc["int8"],
                accuracy_count=acc["count"],
                accuracy_change=acc["int8"] - acc["fp32"],
            )
    return summary
