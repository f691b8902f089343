"""Which experiment trackers a run logs to, through accelerate's tracker integrations.

``--report-to auto`` means TensorBoard when it is installed (event files under OUT/logs),
nothing otherwise. Asking for a tracker that is not installed is an error here, because
accelerate silently drops unavailable trackers and the run would log nowhere. Nothing
needs an account: wandb runs offline unless credentials are present, mlflow writes to a
local store under OUT/logs unless a tracking server is configured.
"""

from __future__ import annotations

import os
from pathlib import Path

from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

from imgtune.errors import UserError

TRACKERS = ("tensorboard", "wandb", "mlflow")


def tracker_available(name: str) -> bool:
    return {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "mlflow": is_mlflow_available}[name]()


def wandb_has_credentials() -> bool:
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return bool(os.environ.get("WANDB_API_KEY")) or (
        netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")
    )


def resolve_trackers(report_to: str, logging_dir: str | Path | None = None) -> list[str]:
    """``auto``/``none``/comma-separated names -> accelerate ``log_with`` names, checked."""
    report_to = (report_to or "auto").strip().lower()
    if report_to == "none":
        return []
    if report_to == "auto":
        return ["tensorboard"] if tracker_available("tensorboard") else []
    names = [t.strip() for t in report_to.split(",") if t.strip()]
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"unknown tracker {name!r} in --report-to: use auto, none, or {', '.join(TRACKERS)}")
        if not tracker_available(name):
            raise UserError(
                f"--report-to {name}: the {name} package is not installed (pip install {name}), "
                "or use --report-to auto/none"
            )
    if logging_dir is not None:
        prepare_environment(names, Path(logging_dir))
    return names


_SET_BY_US: dict[str, str] = {}


def _default_env(key: str, value: str) -> None:
    """Set ``key`` unless the user set it; a value we set for an earlier run in this process is replaced."""
    if os.environ.get(key) in (None, _SET_BY_US.get(key)):
        os.environ[key] = _SET_BY_US[key] = value


def prepare_environment(names: list[str], logging_dir: Path) -> None:
    """Local, account-free defaults (trackers read these from the environment); the user's settings win."""
    logging_dir = logging_dir.resolve()
    if "wandb" in names:
        _default_env("WANDB_DIR", str(logging_dir))
        if not wandb_has_credentials():
            _default_env("WANDB_MODE", "offline")
    if "mlflow" in names:
        _default_env("MLFLOW_TRACKING_URI", (logging_dir / "mlruns").as_uri())
    if names:
        logging_dir.mkdir(parents=True, exist_ok=True)
