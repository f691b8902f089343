"""``imgtune compare``: train several methods on the same data, split and seed, then report.

Each method is an ordinary ``imgtune train`` run into DIR/<method>/, started as its own
process one after another: every run then has its own peak-memory figure (a process's
peak RSS cannot be reset) and a crash or out-of-memory in one method leaves the others
standing. A method counts as finished when DIR/<method>/metrics.json carries the hash of
the configuration it would be trained with now, so an interrupted comparison re-run with
the same flags skips what is done and trains the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from imgtune.compare.report import MethodRun, write_report
from imgtune.config import TrainConfig
from imgtune.data.splits import load_splits
from imgtune.demo import demo_configs, write_untrained_backbone
from imgtune.errors import UserError
from imgtune.tuning.methods import get_method
from imgtune.tuning.pretrained import load_model_config, resolve_model_path

log = logging.getLogger(__name__)

COMPARE_JSON = "compare.json"
CONFIGS_DIR = "configs"
DEFAULT_OUTPUT = "runs/compare"
DEMO_OUTPUT = "imgtune-compare-demo"


@dataclass
class Plan:
    shared: TrainConfig  # what every method shares; method and output_dir are set per method
    methods: list[str]
    output_dir: Path
    title: str
    rerun: bool = False


# --- config identity -------------------------------------------------------------------------


def model_fingerprint(model: str) -> list:
    """A local model directory is identified by its weight and config files (name, size, mtime),
    so retraining the demo backbone in place makes every method stale; a hub id by its name."""
    path = Path(model).expanduser()
    if not path.is_dir():
        return [model]
    files = sorted(
        p for p in path.iterdir() if (p.suffix in (".safetensors", ".bin") or p.name == "config.json") and p.is_file()
    )
    return [str(path.resolve())] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def shared_hash(cfg: TrainConfig) -> str:
    """What every method of a comparison shares: the settings that shape a result (TrainConfig
    says which), less the method, with a local model identified by its files."""
    values = {k: v for k, v in cfg.result_settings().items() if k != "method"}
    values["model"] = model_fingerprint(cfg.model)
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def method_hash(cfg: TrainConfig, method: str) -> str:
    return hashlib.sha256(f"{shared_hash(cfg)}:{method}".encode()).hexdigest()[:16]


def read_metrics(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def finished_metrics(run_dir: Path, expected_hash: str) -> dict | None:
    metrics = read_metrics(run_dir)
    return metrics if metrics is not None and metrics.get("config_hash") == expected_hash else None


# --- running one method ------------------------------------------------------------------------


def train_in_subprocess(cfg: TrainConfig, config_path: Path) -> str | None:
    """``imgtune train --config config_path`` as a child process; None on success, else why it failed.
    The child's output goes straight through; the tail of stderr is kept for the error line."""
    config_path.parent.mkdir(parents=True, exist_ok=True)
    cfg.save(config_path)
    cmd = [sys.executable, "-m", "imgtune", "train", "--config", str(config_path)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    tail = b""
    try:
        while chunk := os.read(proc.stderr.fileno(), 4096):
            sys.stderr.buffer.write(chunk)
            sys.stderr.buffer.flush()
            tail = (tail + chunk)[-8192:]
        code = proc.wait()
    except KeyboardInterrupt:
        proc.wait()  # the child got the same SIGINT and stops itself
        raise
    if code in (130, -2):
        raise KeyboardInterrupt
    if code == 0:
        return None
    lines = [l.strip() for l in tail.decode(errors="replace").replace("\r", "\n").splitlines() if l.strip()]
    errors = [l.removeprefix("imgtune: error: ") for l in lines if l.startswith("imgtune: error:")]
    return errors[-1] if errors else f"exit status {code}: {lines[-1] if lines else 'no output'}"


def run_method(
    cfg: TrainConfig, run_dir: Path, config_path: Path, expected_hash: str, rerun: bool
) -> tuple[dict | None, str | None, bool]:
    """(metrics, error, reused) for one method: reuse a finished run or train it now."""
    if not rerun and (done := finished_metrics(run_dir, expected_hash)) is not None:
        return done, None, True
    (run_dir / "metrics.json").unlink(missing_ok=True)  # a stale run must not look finished if this one stops
    error = train_in_subprocess(cfg, config_path)
    if error:
        return None, error, False
    metrics = read_metrics(run_dir)
    if metrics is None:
        return None, f"the run wrote no metrics.json in {run_dir}", False
    metrics["config_hash"] = expected_hash  # written last: the marker that this method is finished
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics, None, False


# --- the comparison ----------------------------------------------------------------------------


def device_name() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (GPU)"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU, {cores} core(s), {torch.get_num_threads()} torch thread(s)"


def report_settings(cfg: TrainConfig, methods: list[str]) -> dict:
    return {
        "model": cfg.model,
        "dataset": cfg.dataset,
        "classes": cfg.classes,
        "methods": methods,
        "epochs": cfg.epochs or "auto (fitted to the data: see each run's imgtune.yaml)",
        "batch size": f"{cfg.batch_size or 'auto'}"
        + (f" x {cfg.grad_accum} accumulation steps" if cfg.grad_accum > 1 else ""),
        "learning rate": cfg.lr,
        "seed": cfg.seed,
        "precision": cfg.precision,
        "device": device_name(),
        "adapter shape": "each method's ViT default (imgtune methods)"
        if cfg.rank is None and not cfg.target_modules
        else f"rank {cfg.rank}, targets {cfg.target_modules}",
    }


def check_inputs(cfg: TrainConfig) -> None:
    """The model and the data every method shares, checked once in this process with train's own
    loading code: a typo'd path is one error line, not one failed child process per method."""
    if Path(resolve_model_path(cfg.model)).is_dir():  # a hub id is left to train (it may need the network)
        load_model_config(cfg.model)
    load_splits(cfg)


def compare(plan: Plan):
    """Train each method of the plan (or reuse it), then write report.md and report.html."""
    if not plan.methods:
        raise UserError("--methods is empty: name at least one method, e.g. lora,loha")
    for name in plan.methods:
        get_method(name)  # unknown names fail before anything trains
    out = plan.output_dir
    if plan.rerun or any(finished_metrics(out / name, method_hash(plan.shared, name)) is None for name in plan.methods):
        check_inputs(plan.shared)  # before anything is written; a comparison that only reuses needs no data
    out.mkdir(parents=True, exist_ok=True)
    manifest = {
        "shared_config_hash": shared_hash(plan.shared),
        "methods": plan.methods,
        "config": {k: v for k, v in plan.shared.to_dict().items() if k not in ("method", "output_dir")},
    }
    (out / COMPARE_JSON).write_text(json.dumps(manifest, indent=2, default=str))
    runs: list[MethodRun] = []
    try:
        for i, name in enumerate(plan.methods, 1):
            run_dir = out / name
            # the comparison owns its method folders: a stale one is retrained in place
            cfg = plan.shared.replace(method=name, output_dir=str(run_dir), overwrite=True)
            log.info(f"== compare {i}/{len(plan.methods)}: {name} -> {run_dir}")
            metrics, error, reused = run_method(
                cfg, run_dir, out / CONFIGS_DIR / f"{name}.yaml", method_hash(plan.shared, name), plan.rerun
            )
            if reused:
                log.info(f"   already finished with this config: reusing {run_dir}")
            elif error:
                log.warning(f"{name} failed: {error}")
            runs.append(MethodRun(name, metrics, error, reused))
    finally:  # an interrupted comparison still reports what finished
        done = {r.name for r in runs}
        runs += [
            MethodRun(n, error="not finished: the comparison was interrupted") for n in plan.methods if n not in done
        ]
        md, page = write_report(out, runs, report_settings(plan.shared, plan.methods), plan.title)
        log.info(f"report: {md} and {page}")
    return runs


# --- the demo ----------------------------------------------------------------------------------


def demo_plan(out: Path, overrides: dict) -> TrainConfig:
    """The demo's data and settings (digits 5-9 on the demo backbone), each method with its own
    default shape; the backbone (full training on digits 0-4) is trained once and reused."""
    backbone_cfg, adapter_cfg = demo_configs(out)
    if not (out / "untrained" / "config.json").is_file():  # rewriting it would make the backbone stale
        write_untrained_backbone(out / "untrained")
    log.info("== compare: the demo backbone (a compact ViT trained fully on digits 0-4)")
    _, error, reused = run_method(
        backbone_cfg,
        Path(backbone_cfg.output_dir),
        out / CONFIGS_DIR / "backbone.yaml",
        method_hash(backbone_cfg, "backbone"),
        False,
    )
    if error:
        raise UserError(f"the demo backbone failed to train: {error}")
    if reused:
        log.info(f"   reusing {backbone_cfg.output_dir}")
    shared = adapter_cfg.replace(rank=None, alpha=None, dropout=None, target_modules=None)
    return shared.replace(**overrides)
