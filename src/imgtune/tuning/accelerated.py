"""What the training loop needs from accelerate: the accelerator of a run, and the few things that
must agree across processes (the shared sampler, skipped files, the step's loss, a placeholder step)."""

from __future__ import annotations

import resource
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import gather_object

from imgtune.config import TrainConfig
from imgtune.data.badfiles import BadFiles
from imgtune.data.sampler import EpochSampler
from imgtune.data.transforms import BatchNormalizer
from imgtune.inference.precision import resolve_precision
from imgtune.tuning.tracking import resolve_trackers


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    logs = Path(cfg.output_dir) / "logs"
    trackers = resolve_trackers(cfg.report_to, logs)  # checked: accelerate silently drops missing trackers
    # accelerate keeps precision and accumulation in process-wide singletons; several runs in
    # one process (a notebook, `imgtune compare`) each need their own. The distributed state
    # (PartialState) is kept.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    return Accelerator(
        # on a machine without an accelerator, cpu=True is what makes accelerate see a
        # torchrun/`accelerate launch` world as multi-CPU (gloo) rather than N lone processes
        cpu=device_type == "cpu" and not torch.backends.mps.is_available(),
        mixed_precision=resolve_precision(cfg.precision, device_type),
        gradient_accumulation_steps=cfg.grad_accum,
        log_with=trackers or None,
        project_dir=str(logs) if trackers else None,
    )


def find_epoch_sampler(loader) -> EpochSampler:
    """Our sampler, under whatever batch-sampler wrappers accelerate put around it."""
    node = loader
    for _ in range(6):
        # `is None`, not truthiness: a sampler that has nothing left (a resumed epoch whose batches were
        # all consumed) has length 0 and is falsy, and the walk must not step past it
        inner = getattr(node, "batch_sampler", None)
        node = inner if inner is not None else getattr(node, "sampler", None)
        if node is None:
            break
        if isinstance(node, EpochSampler):
            return node
        if isinstance(getattr(node, "sampler", None), EpochSampler):
            return node.sampler
    raise RuntimeError("training loader has no EpochSampler")


def all_bad_files(accelerator: Accelerator, bad: BadFiles) -> dict[str, str]:
    """Each process meets only its shard's bad files: the union over all of them."""
    merged: dict[str, str] = {}
    for reasons in gather_object([bad.reasons]) if accelerator.num_processes > 1 else [bad.reasons]:
        for name, reason in reasons.items():
            merged.setdefault(name, reason)
    return merged


def placeholder_loss(model, normalize: BatchNormalizer, size: int, device) -> torch.Tensor:
    """A zero loss through the real (DDP) forward and backward, for a process whose batch was all
    unreadable files: every process must join each step's gradient all-reduce or the others hang.
    Eval mode, so dropout draws no random numbers and batch-norm statistics stay untouched."""
    model.eval()
    pixels = torch.zeros(1, 3, size, size, dtype=torch.uint8, device=device)
    loss = model(pixel_values=normalize(pixels), labels=torch.zeros(1, dtype=torch.long, device=device)).loss * 0.0
    model.train()
    return loss


def mean_step_loss(accelerator: Accelerator, loss: torch.Tensor, images: int) -> float | None:
    """The step's training loss over every process's images (None when all batches were empty)."""
    if accelerator.num_processes == 1:
        return loss.item()
    count = torch.tensor(float(images), device=loss.device)
    total = accelerator.reduce(torch.stack([loss.detach().float() * count, count]), reduction="sum")
    return (total[0] / total[1]).item() if total[1] > 0 else None


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
