"""``--lr auto``: a learning-rate range test (Smith 2015; fastai's ``lr_find``) on a copy of the model.

The rate grows exponentially from ``START`` to ``END`` over ``SWEEP_STEPS`` optimizer steps of the real
model, data and optimizer; the loss first barely moves, then falls, then blows up. The picked rate
sits where the loss falls fastest, and never above a tenth of the rate at the lowest loss: the
smoothed curve lags the real one, so its minimum is already past the point where training starts to
fail. The sweep runs on a deep copy with every random stream saved and put back, so the run that
follows is exactly the one ``--lr <picked rate>`` gives.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imgtune.compare.plots import new_figure, save_png
from imgtune.tuning.checkpoint import rng_state, set_rng_state

LR_FIND_PNG = "lr_find.png"
START, END = 1e-6, 1.0  # adapters train at 1e-4..1e-2; the range brackets that with room on both sides
SWEEP_STEPS = 80
SMOOTHING = 0.9  # EMA of the loss: single batches are too noisy to read a slope from
DIVERGED = 4.0  # stop once the smoothed loss is this many times its lowest: the rest of the range says nothing
SKIP_START = 5  # the first smoothed points still carry the EMA's start-up bias


@dataclass
class LRFind:
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    steepest: float  # rate at the fastest fall of the smoothed loss
    minimum: float  # rate at the lowest smoothed loss
    suggestion: float  # min(steepest, minimum / 10), to 2 significant digits


def lr_schedule(steps: int = SWEEP_STEPS, start: float = START, end: float = END) -> list[float]:
    return [start * (end / start) ** (i / max(steps - 1, 1)) for i in range(steps)]


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, float, float]:
    """(steepest, minimum, suggestion) of a sweep's smoothed losses. The slope is read across about a
    decade of rates (a difference over ``2 * half`` steps): step to step, the noise of single batches
    makes the flat start of the curve look as steep as its real fall."""
    lowest = int(np.argmin(smoothed))
    minimum = lrs[lowest]
    half = max(2, len(lrs) // 12)
    log_lrs, values = np.log(lrs), np.asarray(smoothed)
    centres = range(SKIP_START + half, lowest - half + 1)
    slopes = [(values[i + half] - values[i - half]) / (log_lrs[i + half] - log_lrs[i - half]) for i in centres]
    steepest = lrs[centres[int(np.argmin(slopes))]] if slopes else minimum / 10
    pick = min(steepest, minimum / 10)
    return steepest, minimum, float(f"{pick:.2g}")


def endless(batches: Callable[[int], Iterator]) -> Iterator:
    """The training batches, pass after pass (a small data set is shorter than the sweep)."""
    for sweep_pass in range(10**6):
        readable = 0
        for batch in batches(sweep_pass):
            readable += len(batch)
            yield batch
        if not readable:
            raise RuntimeError("no training image could be read for the learning-rate sweep")


def lr_range_test(
    model: torch.nn.Module,
    make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
    batches: Callable[[int], Iterator],
    prepare: Callable,
    autocast: Callable,
    max_grad_norm: float | None,
    steps: int = SWEEP_STEPS,
) -> LRFind:
    """Sweep the rate over ``steps`` steps of a copy of ``model``. ``make_optimizer`` builds the run's
    optimizer at lr 1 (its groups' rates are then multipliers: LoRA+ keeps its ratio); ``batches(n)``
    iterates the training data's n-th pass; ``prepare(batch)`` gives (pixels, labels) on the device."""
    saved = rng_state()
    probe = copy.deepcopy(model).train()
    optimizer = make_optimizer(probe)
    multipliers = [group["lr"] for group in optimizer.param_groups]
    lrs, losses, smoothed, average = [], [], [], 0.0
    try:
        data = endless(batches)
        for step, lr in enumerate(lr_schedule(steps)):
            batch = next(b for b in data if len(b))
            for group, multiplier in zip(optimizer.param_groups, multipliers):
                group["lr"] = lr * multiplier
            pixels, labels = prepare(batch)
            with autocast():
                loss = probe(pixel_values=pixels, labels=labels).loss
            loss.backward()
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_([p for p in probe.parameters() if p.requires_grad], max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            value = loss.item()
            if not math.isfinite(value):
                break
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            lrs.append(lr)
            losses.append(value)
            smoothed.append(average / (1 - SMOOTHING ** (step + 1)))
            if step > SKIP_START and smoothed[-1] > DIVERGED * min(smoothed):
                break
    finally:
        del probe, optimizer
        set_rng_state(saved)
    if len(lrs) < 3:
        raise RuntimeError("the learning-rate sweep diverged at once: pass --lr")
    return LRFind(lrs, losses, smoothed, *suggest(lrs, smoothed))


def plot_lr_find(result: LRFind, path: Path) -> Path:
    fig = new_figure(6.0, 3.6)
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses, color="0.75", linewidth=1, label="loss per step")
    ax.plot(result.lrs, result.smoothed, color="tab:blue", linewidth=2, label="smoothed")
    ax.axvline(result.suggestion, color="tab:red", linestyle="--", label=f"picked {result.suggestion:.2g}")
    ax.axvline(result.minimum, color="0.4", linestyle=":", label=f"lowest loss at {result.minimum:.2g}")
    ax.set_xscale("log")
    low, high = min(result.smoothed), max(result.smoothed[: max(SKIP_START, 1)] + [min(result.smoothed)])
    ax.set_ylim(low - 0.1 * abs(low), max(high, low) * 1.5 + 1e-6)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("learning-rate range test")
    ax.legend(fontsize=8)
    return save_png(fig, path)
