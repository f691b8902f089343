"""Crash-safe training checkpoints: everything a resumed run needs to continue bit-for-bit.

A checkpoint is a directory ``OUT/checkpoints/checkpoint-<step>`` holding the trainable
weights (safetensors), optimizer/scheduler/scaler state, every process's RNG states, the
trainer's bookkeeping (epoch, batches consumed, history, best epoch, bad files) and a
``COMPLETE`` manifest with each file's size and sha256. It is written into a temporary
directory, fsynced and renamed, so a run killed while saving leaves no half checkpoint
that could be mistaken for a whole one.

Written here rather than with ``accelerator.save_state`` because that pickles RNG states
and loads them with ``weights_only=False``; here every torch file loads with
``weights_only=True`` and weights come only from safetensors.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import UserError

CHECKPOINTS = "checkpoints"
MANIFEST = "COMPLETE"
WEIGHTS = "trainable.safetensors"
ADALORA = "adalora_importance.safetensors"


@dataclass
class TrainState:
    """The loop's bookkeeping; saved as JSON in every checkpoint."""

    epoch: int = 1               # the epoch in progress (or next to start)
    batches_done: int = 0        # batches of that epoch already consumed
    global_step: int = 0         # optimizer steps
    accumulation_step: int = 0   # accelerate's micro-batch counter (accumulation crosses epochs)
    epoch_loss_sum: float = 0.0  # the running training loss of the epoch in progress
    epoch_loss_count: int = 0
    history: list = field(default_factory=list)
    best_accuracy: float = -1.0
    best_epoch: int = 0
    best_checkpoint: str | None = None
    rank_pattern: dict | None = None       # AdaLoRA's current allocation
    best_rank_pattern: dict | None = None  # ... and the best epoch's
    bad_files: dict = field(default_factory=dict)
    images_seen: int = 0
    train_seconds: float = 0.0


def checkpoint_root(out: Path) -> Path:
    return Path(out) / CHECKPOINTS


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def adalora_allocator(model: torch.nn.Module):
    base = getattr(model, "base_model", None)
    return getattr(base, "rankallocator", None)


def save_checkpoint(accelerator, out: Path, name: str, model, optimizer, scheduler, state: TrainState,
                    keep_last: int | None) -> Path:
    """Write checkpoint ``name`` atomically (every process calls this; the main one writes the shared parts)."""
    root = checkpoint_root(out)
    tmp = root / f".tmp-{name}"
    final = root / name
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(), tmp / f"rng_{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        save_file(trainable_state(unwrapped), str(tmp / WEIGHTS))
        allocator = adalora_allocator(unwrapped)
        if allocator is not None and allocator.ipt:
            tensors = {f"{kind}::{n}": t.detach().cpu().contiguous()
                       for kind in ("ipt", "exp_avg_ipt", "exp_avg_unc") for n, t in getattr(allocator, kind).items()}
            save_file(tensors, str(tmp / ADALORA))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if accelerator.scaler is not None:
            torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(asdict(state), indent=1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        manifest = {}
        for path in sorted(tmp.iterdir()):
            _fsync(path)
            manifest[path.name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _fsync(tmp / MANIFEST)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync(root)
        prune_checkpoints(root, keep_last, state.best_checkpoint, final.name)
    accelerator.wait_for_everyone()
    return final


def _step_of(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[-1])
    except ValueError:
        return -1


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoints, oldest first; temporary or unmarked directories are never listed."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("checkpoint-") and (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: (_step_of(p), p.stat().st_mtime))


def prune_checkpoints(root: Path, keep_last: int | None, best: str | None, newest: str) -> None:
    """Keep the newest ``keep_last`` plus the best; remove stale temporaries too."""
    for tmp in root.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    if not keep_last:
        return
    done = complete_checkpoints(root)
    keep = {p.name for p in done[-keep_last:]} | {best, newest}
    for path in done:
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


def find_checkpoint(out: Path, resume: str) -> Path | None:
    """``auto``: the newest complete checkpoint in OUT (None if there is none); else a path."""
    if resume == "auto":
        done = complete_checkpoints(checkpoint_root(out))
        return done[-1] if done else None
    path = Path(resume).expanduser()
    if not (path / MANIFEST).is_file():
        raise UserError(f"--resume {resume}: not a complete checkpoint (no {MANIFEST} manifest in it); "
                        f"use --resume auto or one of {checkpoint_root(out)}/checkpoint-*")
    return path


def verify(path: Path) -> None:
    """Every file the manifest lists is there with its size and hash: catches truncation and tampering."""
    manifest = json.loads((path / MANIFEST).read_text())
    for name, expected in manifest.items():
        file = path / name
        if not file.is_file() or file.stat().st_size != expected["bytes"] or _sha256(file) != expected["sha256"]:
            raise UserError(f"checkpoint {path} is damaged ({name} does not match its manifest): "
                            "delete it to resume from an older one, or start again without --resume")


def _load_torch(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise UserError(f"checkpoint file {path} cannot be loaded safely: {str(err).splitlines()[0][:200]}") from None


def load_weights(path: Path, model: torch.nn.Module) -> None:
    try:
        weights = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError) as err:
        raise UserError(f"checkpoint {path} has unreadable weights: {err}") from None
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise UserError(f"checkpoint {path} does not fit this model (unknown weight {missing[0]}): "
                        "was it made with another --method or --model?")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)


def load_checkpoint(accelerator, path: Path, model, optimizer, scheduler) -> TrainState:
    verify(path)
    unwrapped = accelerator.unwrap_model(model)
    load_weights(path, unwrapped)
    optimizer.load_state_dict(_load_torch(path / "optimizer.pt"))
    scheduler.load_state_dict(_load_torch(path / "scheduler.pt"))
    if accelerator.scaler is not None and (path / "scaler.pt").is_file():
        accelerator.scaler.load_state_dict(_load_torch(path / "scaler.pt"))
    state = TrainState(**json.loads((path / "trainer_state.json").read_text()))
    allocator = adalora_allocator(unwrapped)
    if allocator is not None and (path / ADALORA).is_file():
        device = next(unwrapped.parameters()).device
        for key, tensor in load_file(str(path / ADALORA)).items():
            kind, name = key.split("::", 1)
            getattr(allocator, kind)[name] = tensor.to(device)
    rng_file = path / f"rng_{accelerator.process_index}.pt"
    if rng_file.is_file():
        set_rng_state(_load_torch(rng_file))
    return state
