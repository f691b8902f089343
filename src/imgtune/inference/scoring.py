"""The scoring pass: loss, accuracy and top-5 of a model over a loader, once per image, across
processes. Shared by training (each epoch) and ``evaluate``; imports nothing of imgtune but ``data``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, confusion_matrix
from tqdm.auto import tqdm

from imgtune.data.badfiles import BadFiles
from imgtune.data.transforms import BatchNormalizer


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    top5: float
    count: int
    predictions: np.ndarray = field(repr=False)
    targets: np.ndarray = field(repr=False)

    def metrics(self, prefix: str = "") -> dict[str, float]:
        return {
            f"{prefix}loss": self.loss,
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}top5": self.top5,
            f"{prefix}count": self.count,
        }

    def confusion(self, num_labels: int) -> np.ndarray:
        if not len(self.targets):  # every image unreadable: scikit-learn refuses empty input
            return np.zeros((num_labels, num_labels), dtype=np.int64)
        return confusion_matrix(self.targets, self.predictions, labels=list(range(num_labels)))

    def per_class_accuracy(self, num_labels: int) -> list[float | None]:
        cm = self.confusion(num_labels)
        totals = cm.sum(axis=1)
        return [float(cm[i, i] / totals[i]) if totals[i] else None for i in range(num_labels)]


@torch.no_grad()
def run_eval(
    model,
    loader,
    normalize: BatchNormalizer,
    accelerator=None,
    bad: BadFiles | None = None,
    desc: str = "eval",
    progress: bool = True,
) -> EvalResult:
    """One pass over ``loader``; under accelerate each process evaluates its shard.

    Per-image results are gathered with their dataset index and de-duplicated on it, rather
    than with ``gather_for_metrics``: that one trims accelerate's padding by counting samples,
    which goes wrong once unreadable files drop out of a batch, and gathering batches of
    different sizes (or skipping an empty one) would hang the other processes."""
    model.eval()
    device = accelerator.device if accelerator else next(model.parameters()).device
    shared = accelerator is not None and accelerator.num_processes > 1
    parts: list[tuple[torch.Tensor, ...]] = []  # (index, target, prediction, loss, top-5 hit) per image
    for batch in tqdm(loader, desc=desc, leave=False, disable=None if progress else True):
        if bad is not None:
            bad.add(batch.skipped)
        if len(batch) == 0 and not shared:
            continue
        if len(batch):
            batch = batch.to(device)
            logits = model(pixel_values=normalize(batch.pixel_values)).logits.float()
            labels = batch.labels
            top5 = (logits.topk(min(5, logits.shape[1])).indices == labels[:, None]).any(dim=1)
            rows = (
                batch.indices.to(device),
                labels,
                logits.argmax(dim=1),
                F.cross_entropy(logits, labels, reduction="none"),
                top5.float(),
            )
        else:
            rows = (
                *(torch.zeros(0, dtype=torch.long, device=device) for _ in range(3)),
                *(torch.zeros(0, device=device) for _ in range(2)),
            )
        if shared:
            # equal sizes for the all-gather; padding rows carry index -1
            rows = accelerator.gather(accelerator.pad_across_processes(rows, dim=0, pad_index=-1))
            real = rows[0] >= 0
            rows = tuple(t[real] for t in rows)
        parts.append(tuple(t.cpu() for t in rows))
    indices = torch.cat([p[0] for p in parts]) if parts else torch.zeros(0, dtype=torch.long)
    if not len(indices):
        return EvalResult(float("nan"), 0.0, 0.0, 0, np.zeros(0, dtype=int), np.zeros(0, dtype=int))
    # accelerate pads an uneven last round with images from the start: count each image once, in index order
    _, first = np.unique(indices.numpy(), return_index=True)
    keep = torch.from_numpy(first)
    targets, preds, losses, top5 = (torch.cat([p[i] for p in parts])[keep] for i in range(1, 5))
    y_true, y_pred = targets.numpy(), preds.numpy()
    return EvalResult(
        losses.double().mean().item(),
        float(accuracy_score(y_true, y_pred)),
        top5.double().mean().item(),
        len(y_true),
        y_pred,
        y_true,
    )
