"""Where inference runs and in which autocast dtype: measured rules, not hopes."""

from __future__ import annotations

import contextlib

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
