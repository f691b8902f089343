"""Where inference runs and in which autocast dtype: measured rules, not hopes."""

from __future__ import annotations

import contextlib
import copy
import math
import time

import torch

from imgtune.errors import UserError


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: without them CPU bf16 autocast is emulated and was measured ~70x
    slower than fp32 for a ViT-B/16 training step on a CI machine (~20-25x on a 2-core AVX2
    AMD EPYC); with AMX it was ~2x faster."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check() for check in checks if check is not None)


def resolve_precision(precision: str, device_type: str) -> str:
    """``auto``/``fp32``/``bf16``/``fp16`` -> accelerate's mixed_precision value (no, bf16, fp16)."""
    if precision == "fp32":
        return "no"
    if precision == "auto":
        if device_type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device_type == "cpu" and cpu_has_native_bf16():
            return "bf16"
        return "no"
    if precision == "fp16" and device_type == "cpu":
        raise UserError(
            "fp16 mixed precision needs a GPU: use --precision fp32 on a CPU "
            "(or bf16, where the CPU has native bf16: AMX or AVX512-BF16)"
        )
    return precision


def precision_name(mode: str) -> str:
    """accelerate's mixed-precision value (no, bf16, fp16) -> the name a user passes and reads (fp32, bf16, fp16)."""
    return "fp32" if mode == "no" else mode


def step_seconds(
    model: torch.nn.Module, batch_size: int, size: int, mode: str, warmup: int = 1, timed: int = 2
) -> float:
    """The fastest of ``timed`` forward+backward steps of ``model`` (on the CPU) at ``batch_size`` random
    ``size`` px images, under ``mode``'s autocast, after ``warmup`` untimed ones (oneDNN picks and caches
    its kernels on the first call). Works on a copy with the random streams forked: the run's model,
    batch-norm statistics and random numbers stay as they were."""
    probe = copy.deepcopy(model).train()
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch_size, 3, size, size, generator=generator)
    labels = torch.zeros(batch_size, dtype=torch.long)
    best = math.inf
    with torch.random.fork_rng(devices=[]):
        for i in range(warmup + timed):
            started = time.perf_counter()
            with inference_autocast(mode, "cpu"):
                loss = probe(pixel_values=pixels, labels=labels).loss
            loss.backward()
            probe.zero_grad(set_to_none=True)
            if i >= warmup:
                best = min(best, time.perf_counter() - started)
    return best


def faster_cpu_precision(model: torch.nn.Module, batch_size: int, size: int) -> tuple[str, dict[str, float]]:
    """``bf16`` or ``no``, whichever trains ``model`` faster on this CPU, and the seconds per step of each.

    Native bf16 is not always faster: AMX wins on large matrix products (ViT-B: ~2x), but a small model's
    steps are dominated by layer norms, softmax and the casts autocast adds around every matmul, where
    fp32 can win. So the real model at the real batch size is timed, a few steps each."""
    times = {mode: step_seconds(model, batch_size, size, mode) for mode in ("no", "bf16")}
    return min(times, key=times.get), times


def inference_autocast(mode: str, device_type: str):
    """A fresh autocast context for accelerate's ``mode`` (no, bf16, fp16); a no-op for fp32."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def resolve_device(name: str | None) -> torch.device:
    """``None`` -> the GPU when there is one, else the CPU; a named device must exist here."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UserError(
            f"device {name!r} is not available here ({torch.cuda.device_count()} CUDA device(s)): "
            "use --device cpu or leave it out"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' is not available here: use --device cpu or leave it out")
    return device
