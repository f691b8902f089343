"""Checks of a run's config that need no ML library: they run before any model or data is loaded,
so a misspelt method, a missing folder, a hub id without a network or an output directory that
holds another run fail in the first second, not after minutes of loading.

Imports only the standard library, yaml, huggingface_hub's constants and cache lookup, and imgtune's
config, errors, storage and the method names (no ML library).
"""

from __future__ import annotations

import os
import re
import socket
import time
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

import yaml
from huggingface_hub import constants, try_to_load_from_cache

from imgtune.config import TrainConfig
from imgtune.errors import UserError
from imgtune.storage import check_free_space
from imgtune.tuning.method_names import method_names

RUN_CONFIG = "imgtune.yaml"  # rundir.RUN_CONFIG (rundir loads torch: not imported here)
HUB_TIMEOUT_S = 3.0


def looks_like_path(name: str) -> bool:
    """A name the user meant as a local path: it exists, is spelt as a path, or has more than one slash
    (hub ids are ``owner/name``)."""
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1


def hub_offline() -> bool:
    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


@cache
def hub_reachable() -> bool:
    """One TCP connection to the hub's endpoint, a few seconds at most (huggingface_hub's own
    retries take half a minute to give up)."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=HUB_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def check_model_files(name: str) -> None:
    """A local model directory that transformers will load: a config, and weights that are not pickles."""
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise UserError(f"model {name!r} is not a directory holding a saved model (config.json)")
    pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
    if pickles and not any(path.glob("*.safetensors")):
        raise UserError(
            f"model {name!r} holds only pickled weights ({', '.join(sorted(pickles)[:2])}), which are "
            "not loaded (unpickling can run code): convert it to safetensors (load it once where you "
            "trust it, then save_pretrained)"
        )


def check_model(name: str) -> None:
    if looks_like_path(name):
        check_model_files(name)
        return
    if hub_offline():
        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise UserError(
                f"model {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: "
                "pass a local model directory with --model, or unset HF_HUB_OFFLINE"
            )
        return
    if not hub_reachable():
        raise UserError(
            f"model {name!r} is a hub id but the hub cannot be reached: pass a local model directory "
            "with --model, or set HF_HUB_OFFLINE=1 to use a copy in the local Hugging Face cache"
        )


def check_dataset(spec: str) -> None:
    if spec == "digits":
        return
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".csv" and not path.is_file():
        raise UserError(f"CSV file {spec} does not exist")
    if looks_like_path(spec):
        if not (path.is_dir() or path.is_file()):
            raise UserError(f"dataset {spec!r} does not exist: pass an image folder, a .csv file, 'digits' or a hub id")
        return
    if not hub_offline() and not os.environ.get("HF_DATASETS_OFFLINE") and not hub_reachable():
        raise UserError(
            f"dataset {spec!r} is a hub id but the hub cannot be reached: pass a local folder or CSV "
            "with --dataset, or set HF_DATASETS_OFFLINE=1 to use a copy in the local cache"
        )


def default_output_dir(cfg: TrainConfig) -> str:
    """``runs/<model>-<method>-<dataset>-<time>``: a run with no --output-dir gets a place of its own."""

    def short(name: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(name.partition(":")[0].rstrip("/")).stem) or "data"

    return f"runs/{short(cfg.model)}-{cfg.method}-{short(cfg.dataset)}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_writable_dir(path: Path, flag: str) -> None:
    """``path`` is, or can be made, a directory this process can write into."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file: pass a directory")
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and (not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK)):
        raise UserError(f"cannot write {flag} {path} ({existing} is not a writable directory): pass another one")


def check_output_dir(cfg: TrainConfig) -> None:
    """Writable, and not another run's: a finished run with other settings is only replaced on
    ``--overwrite`` (a resumed run, or the same settings again, is the same run)."""
    out = Path(cfg.output_dir).expanduser()
    check_writable_dir(out, "--output-dir")
    if cfg.cache:
        check_writable_dir(Path(cfg.cache).expanduser(), "--cache")
    recorded = out / RUN_CONFIG
    if cfg.overwrite or cfg.resume or not recorded.is_file():
        return
    try:
        earlier = TrainConfig(**(yaml.safe_load(recorded.read_text()) or {}))
    except (UserError, TypeError, yaml.YAMLError):
        earlier = None  # unreadable or from another version: not provably the same run
    if earlier is not None and earlier.result_settings() == cfg.with_auto_from(earlier).result_settings():
        return
    what = f"{earlier.method} on {earlier.dataset}" if earlier is not None else "another run"
    raise UserError(
        f"--output-dir {out} holds {what} with other settings: pass --overwrite to replace it, or another --output-dir"
    )


def expected_bytes(cfg: TrainConfig) -> int:
    """A rough size of what a run writes: trained weights in the run, and per kept checkpoint those
    weights, the best epoch's copy and AdamW's two moments. Adapters and the head are a few percent of
    the model at most; full training trains it all. Enough to refuse a disk that cannot hold the run."""
    path = Path(cfg.model).expanduser()
    if not path.is_dir():
        return 0  # a hub id: its size is unknown until it is downloaded
    model = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    trained = model if cfg.method == "full" else model // 20
    checkpoints = (cfg.save_total_limit or 1) + 1
    return trained * (1 + 4 * checkpoints) + (1 << 20)


def preflight(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` checked against the file system and the network, with its output directory decided."""
    if cfg.method not in method_names():
        raise UserError(f"unknown method {cfg.method!r}: choose one of {', '.join(method_names())}")
    if cfg.output_dir is None:
        if cfg.resume:
            raise UserError("--resume needs the --output-dir of the run to resume")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError("under accelerate launch, pass --output-dir (every process must write to the same one)")
        cfg = cfg.replace(output_dir=default_output_dir(cfg))
    check_output_dir(cfg)
    check_free_space(Path(cfg.output_dir), expected_bytes(cfg), "--output-dir")
    if cfg.resume and cfg.resume != "auto" and not Path(cfg.resume).expanduser().exists():
        raise UserError(f"--resume {cfg.resume}: no such checkpoint; use --resume auto or a checkpoint directory")
    check_model(cfg.model)
    check_dataset(cfg.dataset)
    return cfg
