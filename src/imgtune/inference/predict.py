"""Classify images with a trained run: batched, top-k labels with probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from imgtune.data.badfiles import check_strict
from imgtune.data.decode import BadImage, decode_rgb, list_images
from imgtune.data.loading import make_loader
from imgtune.data.samples import ImageDataset
from imgtune.data.transforms import BatchNormalizer, ImageSpec, eval_transform
from imgtune.data.workers import loader_workers
from imgtune.errors import UserError, check_counts
from imgtune.inference.merge import try_merge
from imgtune.inference.precision import inference_autocast, resolve_device, resolve_precision
from imgtune.rundir import LoadedRun, load_run


def top_k(probs: torch.Tensor, labels: list[str], k: int) -> list[dict[str, Any]]:
    """One image's ``k`` most likely labels with their probabilities, best first."""
    scores, indices = probs.topk(min(k, probs.shape[-1]))
    return [{"label": labels[i], "score": round(float(s), 6)} for s, i in zip(scores.tolist(), indices.tolist())]


class Predictor:
    """A loaded run plus its eval preprocessing; reused by the CLI, the server and benchmarks."""

    def __init__(self, run: LoadedRun, device: str | None = None, precision: str = "auto", merge: bool = True):
        self.run = run
        self.device = resolve_device(device)
        model = run.model
        if merge and run.is_adapter:
            # inference never switches adapters, so fold this one into the base: no adapter overhead
            model = try_merge(model)
        self.model = model.to(self.device).eval()
        self.precision = resolve_precision(precision, self.device.type)
        self.spec = ImageSpec.from_processor(run.processor)
        self.transform = eval_transform(self.spec)
        self.normalize = BatchNormalizer(self.spec).to(self.device)

    @classmethod
    def from_dir(
        cls,
        output_dir: str | Path,
        device: str | None = None,
        precision: str = "auto",
        merge: bool = True,
        base: str | None = None,
    ) -> Predictor:
        """The run in ``output_dir``; ``base`` replaces an adapter run's recorded base model."""
        return cls(load_run(output_dir, base), device, precision, merge)

    @torch.inference_mode()
    def probabilities(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 NCHW batch (already resized/cropped) -> class probabilities."""
        with inference_autocast(self.precision, self.device.type):
            logits = self.model(pixel_values=self.normalize(pixels.to(self.device, non_blocking=True))).logits
        return logits.float().softmax(dim=-1).cpu()

    def top_k(self, probs: torch.Tensor, k: int) -> list[list[dict[str, Any]]]:
        return [top_k(row, self.run.labels, k) for row in probs]

    def predict(
        self, sources: Sequence[Any], top_k: int = 5, batch_size: int = 32, num_workers: int | None = None
    ) -> tuple[list[dict], list[dict]]:
        """(results, skipped): one result per readable source, in order; unreadable ones skipped."""
        workers = loader_workers(num_workers, self.device.type)
        loader = make_loader(
            ImageDataset(list(sources), self.transform, self.spec.size),
            batch_size,
            False,
            0,
            workers,
            pin_memory=self.device.type == "cuda",
        )
        results, skipped = [], []
        for batch in loader:
            skipped += [{"image": s.name, "error": s.reason} for s in batch.skipped]
            if len(batch):
                tops = self.top_k(self.probabilities(batch.pixel_values), top_k)
                results += [{"image": str(sources[i]), "predictions": t} for i, t in zip(batch.indices.tolist(), tops)]
        return results, skipped


def expand_inputs(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """(explicit files, files found in folders). Missing paths are an error."""
    explicit, found = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += [str(p) for p in list_images(path)]
        elif path.is_file():
            explicit.append(str(path))
        else:
            raise UserError(f"{item}: no such file or folder")
    return explicit, found


def predict(
    output_dir: str | Path,
    inputs: Sequence[str],
    top_k: int = 5,
    batch_size: int = 32,
    bad_files: str = "skip",
    predictor: Predictor | None = None,
    precision: str = "auto",
    device: str | None = None,
    base: str | None = None,
) -> tuple[list[dict], list[dict]]:
    """Predict images and folders. A file named explicitly must be readable (else UserError);
    unreadable files found in folders are skipped and returned, or refused under ``strict``."""
    check_counts(top_k=top_k, batch_size=batch_size)
    explicit, found = expand_inputs(inputs)
    for path in explicit:
        try:
            decode_rgb(path)
        except BadImage as err:
            raise UserError(f"cannot read image {path}: {err}") from None
    if bad_files == "strict":
        check_strict({"inputs": found})  # names every unreadable file, as train and evaluate do
    if not explicit and not found:
        raise UserError(f"no images in {', '.join(inputs)}")
    predictor = predictor or Predictor.from_dir(output_dir, device, precision, base=base)
    return predictor.predict(explicit + found, top_k, batch_size)
