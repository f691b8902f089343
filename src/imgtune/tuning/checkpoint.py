"""Crash-safe training checkpoints: everything a resumed run needs to continue bit-for-bit.

A checkpoint is a directory ``OUT/checkpoints/checkpoint-<step>`` holding the trainable
weights (safetensors), the best epoch's weights so far (so every checkpoint is
self-contained), optimizer/scheduler/scaler state, every process's RNG states, the method's
own tensors (AdaLoRA's importance scores), the trainer's bookkeeping (epoch, batches consumed, history, best
epoch, bad files, the settings that shape the result) and a ``COMPLETE`` manifest with
each file's size and sha256. It is written into a temporary directory, fsynced and
renamed, so a run killed while saving leaves no half checkpoint that could be mistaken
for a whole one.

Written here rather than with ``accelerator.save_state`` because that saves the whole
model (the frozen base too: 330 MB a checkpoint for ViT-B instead of 2.6 MB), and loads
RNG states inside a ``try/except`` that silently skips a damaged file; here every torch
file loads with ``weights_only=True``, weights come only from safetensors, and a damaged
file is an error.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from imgtune.config import TrainConfig
from imgtune.errors import UserError
from imgtune.storage import fsync, sha256, writing
from imgtune.tuning.methods import Method

CHECKPOINTS = "checkpoints"
MANIFEST = "COMPLETE"
WEIGHTS = "trainable.safetensors"
BEST = "best.safetensors"
METHOD_TENSORS = "method_state.safetensors"  # e.g. AdaLoRA's importance scores
LEGACY_METHOD_TENSORS = "adalora_importance.safetensors"  # the same, in checkpoints of imgtune 0.1
STATE = "trainer_state.json"


@dataclass
class TrainState:
    """The loop's bookkeeping; saved as JSON in every checkpoint."""

    epoch: int = 1  # the epoch in progress (or next to start)
    batches_done: int = 0  # batches of that epoch already consumed (by each process)
    global_step: int = 0  # optimizer steps
    accumulation_step: int = 0  # accelerate's micro-batch counter (accumulation crosses epochs)
    epoch_loss_sum: float = 0.0  # the running training loss of the epoch in progress
    epoch_loss_count: int = 0
    history: list = field(default_factory=list)
    best_accuracy: float = -1.0
    best_epoch: int = 0
    best_checkpoint: str | None = None
    method_state: dict | None = None  # the method's own state (AdaLoRA: its rank pattern)
    best_method_state: dict | None = None  # ... as it was at the best epoch
    bad_files: dict = field(default_factory=dict)
    images_seen: int = 0
    train_seconds: float = 0.0
    run_id: str = ""  # which run wrote it: rotation never deletes another run's checkpoints
    num_processes: int = 1
    settings: dict = field(default_factory=dict)  # TrainConfig.result_settings()


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]  # os.urandom: leaves the seeded RNGs alone


def checkpoint_root(out: Path) -> Path:
    return Path(out) / CHECKPOINTS


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


def save_checkpoint(
    accelerator,
    out: Path,
    name: str,
    model,
    optimizer,
    scheduler,
    state: TrainState,
    best: dict[str, torch.Tensor] | None,
    best_is_current: bool,
    keep_last: int | None,
    method: Method,
) -> Path:
    """Write checkpoint ``name`` atomically (every process calls this; the main one writes the shared parts).

    Assumes OUT is on storage every process sees (one machine, or a shared file system)."""
    root = checkpoint_root(out)
    with writing(root / name):  # a full disk is one line; the unfinished .tmp- folder is never a checkpoint
        return write_checkpoint(
            accelerator, root, name, model, optimizer, scheduler, state, best, best_is_current, keep_last, method
        )


def write_checkpoint(accelerator, root: Path, name: str, model, optimizer, scheduler, state: TrainState,
                     best: dict[str, torch.Tensor] | None, best_is_current: bool, keep_last: int | None,
                     method: Method) -> Path:  # fmt: skip
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
        if best is not None and not best_is_current:
            save_file(best, str(tmp / BEST))
        extra = method.checkpoint_tensors(unwrapped)
        if extra:
            save_file(extra, str(tmp / METHOD_TENSORS))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if accelerator.scaler is not None:
            torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
        (tmp / STATE).write_text(json.dumps(asdict(state), indent=1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {}
        for path in sorted(tmp.iterdir()):
            fsync(path)
            files[path.name] = {"bytes": path.stat().st_size, "sha256": sha256(path)}
        manifest = {"run_id": state.run_id, "step": state.global_step, "saved_at": time.time(), "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        fsync(tmp / MANIFEST)
        fsync(tmp)
        shutil.rmtree(final, ignore_errors=True)  # the same step written again (a resume from an older one)
        os.replace(tmp, final)
        fsync(root)
        prune_checkpoints(root, keep_last, state.run_id, state.best_checkpoint, final.name)
    accelerator.wait_for_everyone()
    return final


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        if not isinstance(manifest.get("files"), dict):
            raise ValueError("no file list")
        return manifest
    except (OSError, ValueError, AttributeError) as err:
        raise UserError(
            f"checkpoint {path} has an unreadable {MANIFEST} manifest ({err}): "
            "delete it to resume from an older one, or start again without --resume"
        ) from None


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoints, oldest first (by when they were written); temporary or unmarked
    directories are never listed."""
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.is_dir() and path.name.startswith("checkpoint-") and (path / MANIFEST).is_file():
            try:
                manifest = json.loads((path / MANIFEST).read_text())
                found.append((float(manifest["saved_at"]), int(manifest["step"]), path))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a damaged manifest: not a checkpoint we can trust
    return [p for *_, p in sorted(found)]


def run_of(path: Path) -> str | None:
    try:
        return json.loads((path / MANIFEST).read_text()).get("run_id")
    except (OSError, ValueError):
        return None


def prune_checkpoints(root: Path, keep_last: int | None, run_id: str, best: str | None, newest: str) -> None:
    """Keep this run's newest ``keep_last`` plus its best; remove stale temporaries too.
    Another run's checkpoints (an earlier run in the same OUT) are left alone."""
    for tmp in root.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    if not keep_last:
        return
    mine = [p for p in complete_checkpoints(root) if run_of(p) == run_id]
    keep = {p.name for p in mine[-keep_last:]} | {best, newest}
    for path in mine:
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


def read_state(path: Path) -> TrainState:
    try:
        data = json.loads((path / STATE).read_text())
        for legacy, key in (("rank_pattern", "method_state"), ("best_rank_pattern", "best_method_state")):
            if data.get(legacy) is not None and key not in data:  # written before methods kept their own state
                data[key] = {"rank_pattern": data[legacy]}
        known = {f.name for f in fields(TrainState)}
        return TrainState(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError) as err:
        raise UserError(
            f"checkpoint {path} has an unreadable {STATE} ({err}): "
            "delete it to resume from an older one, or start again without --resume"
        ) from None


def set_aside_earlier_runs(root: Path) -> tuple[int, list[Path]]:
    """Before a fresh run (no --resume) in an OUT that already has checkpoints. A finished earlier
    run's are removed (its outputs are being replaced anyway); an unfinished one's are moved to
    ``checkpoints/earlier-<run id>/``, out of the new run's way (same step names) but still there for
    ``--resume PATH``, so forgetting ``--resume auto`` never throws hours of training away.
    Returns (checkpoints removed, folders they were moved to)."""
    runs: dict[str, list[Path]] = {}
    for path in complete_checkpoints(root):
        runs.setdefault(run_of(path) or "unknown", []).append(path)
    removed, moved = 0, []
    for run_id, paths in runs.items():
        state = read_state(paths[-1])
        epochs = state.settings.get("epochs")
        if epochs is not None and state.epoch > epochs:
            for path in paths:
                shutil.rmtree(path, ignore_errors=True)
            removed += len(paths)
            continue
        aside = root / f"earlier-{run_id}"
        aside.mkdir(exist_ok=True)
        for path in paths:
            shutil.rmtree(aside / path.name, ignore_errors=True)
            os.replace(path, aside / path.name)
        moved.append(aside)
    return removed, moved


def find_checkpoint(out: Path, resume: str) -> Path | None:
    """``auto``: the newest complete checkpoint in OUT (None if there is none); else a path."""
    if resume == "auto":
        done = complete_checkpoints(checkpoint_root(out))
        return done[-1] if done else None
    path = Path(resume).expanduser()
    if not path.exists():
        raise UserError(
            f"--resume {resume}: no such checkpoint; use --resume auto or one of {checkpoint_root(out)}/checkpoint-*"
        )
    if not (path / MANIFEST).is_file():
        raise UserError(
            f"--resume {resume}: not a complete checkpoint (no {MANIFEST} manifest in it); "
            f"use --resume auto or one of {checkpoint_root(out)}/checkpoint-*"
        )
    return path


# what every checkpoint holds, whatever the method and the number of processes
REQUIRED = (WEIGHTS, STATE, "optimizer.pt", "scheduler.pt", "rng_0.pt")


def verify(path: Path) -> None:
    """The manifest lists exactly the files there are, the required ones among them, each with its size
    and hash. This catches corruption and truncation (and a manifest emptied or cut short); it is not
    a signature: whoever can write the directory can write a matching manifest too."""
    listed = read_manifest(path)["files"]
    present = {p.name for p in path.iterdir()} - {MANIFEST}
    missing = [n for n in REQUIRED if n not in listed] + sorted(set(listed) - present)
    unlisted = sorted(present - set(listed))
    if missing or unlisted:
        what = f"missing {', '.join(missing)}" if missing else f"not in its manifest: {', '.join(unlisted)}"
        raise UserError(
            f"checkpoint {path} is damaged ({what}): delete it to resume from an older one, or start again "
            "without --resume"
        )
    for name, expected in listed.items():
        file = path / name
        if not file.is_file() or file.stat().st_size != expected["bytes"] or sha256(file) != expected["sha256"]:
            raise UserError(
                f"checkpoint {path} is damaged ({name} does not match its manifest): "
                "delete it to resume from an older one, or start again without --resume"
            )


def check_compatible(path: Path, state: TrainState, cfg: TrainConfig, num_processes: int) -> None:
    """A checkpoint only continues the run that wrote it: same settings, same process count."""
    now = cfg.result_settings()
    changed = [
        k
        for k in sorted(set(now) | set(state.settings))
        if json.dumps(now.get(k), sort_keys=True) != json.dumps(state.settings.get(k), sort_keys=True)
    ]
    if changed:
        listing = ", ".join(f"{k}={state.settings.get(k)!r} (now {now.get(k)!r})" for k in changed[:4])
        raise UserError(
            f"checkpoint {path} was made with other settings: {listing}; resume with the same "
            "settings, or start a new run in another --output-dir"
        )
    if state.num_processes != num_processes:
        raise UserError(
            f"checkpoint {path} was written by {state.num_processes} process(es), this run has "
            f"{num_processes}: resume with `accelerate launch --num_processes {state.num_processes}`"
        )


def _load_torch(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise UserError(f"checkpoint file {path} cannot be loaded safely: {str(err).splitlines()[0][:200]}") from None


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise UserError(f"checkpoint file {path} is unreadable: {err}") from None


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], where: str = "these weights") -> None:
    """Copy named trainable weights into ``model`` (checkpoints and the best epoch's snapshot alike)."""
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params or params[n].shape != weights[n].shape]
    if missing:
        raise UserError(
            f"{where} do not fit this model (weight {missing[0]}): was it made with another --method or --model?"
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)


def load_checkpoint(
    accelerator, path: Path, cfg: TrainConfig, model, optimizer, scheduler, method: Method
) -> tuple[TrainState, dict[str, torch.Tensor] | None]:
    """Restore everything into the prepared objects; returns the bookkeeping and the best weights so far."""
    verify(path)
    state = read_state(path)
    check_compatible(path, state, cfg, accelerator.num_processes)
    unwrapped = accelerator.unwrap_model(model)
    load_weights(unwrapped, _load_safetensors(path / WEIGHTS), f"the weights of checkpoint {path}")
    optimizer.load_state_dict(_load_torch(path / "optimizer.pt"))
    scheduler.load_state_dict(_load_torch(path / "scheduler.pt"))
    if accelerator.scaler is not None and (path / "scaler.pt").is_file():
        accelerator.scaler.load_state_dict(_load_torch(path / "scaler.pt"))
    extra = path / METHOD_TENSORS
    if not extra.is_file() and (path / LEGACY_METHOD_TENSORS).is_file():
        extra = path / LEGACY_METHOD_TENSORS
    method.load_checkpoint_tensors(unwrapped, _load_safetensors(extra) if extra.is_file() else {})
    best = None
    if state.best_checkpoint is not None:
        best = _load_safetensors(path / BEST) if (path / BEST).is_file() else trainable_state(unwrapped)
    set_rng_state(_load_torch(path / f"rng_{accelerator.process_index}.pt"))
    return state, best
