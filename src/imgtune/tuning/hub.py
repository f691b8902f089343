"""``--push-to-hub``: checked before training (so an offline or token-less run fails in
seconds, not after hours), pushed with huggingface_hub after it."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token

from imgtune.errors import UserError


def default_repo_name(model: str, method: str, dataset: str) -> str:
    """The seeds' convention: ``<model>-finetuned-<method>-<dataset>``."""
    model_name = Path(model.rstrip("/")).name
    dataset_name = Path(dataset.partition(":")[0].rstrip("/")).stem
    return f"{model_name}-finetuned-{method}-{dataset_name}"


def check_push(repo: str, model: str, method: str, dataset: str) -> str:
    """The full repo id to push to; a UserError now if pushing cannot work."""
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise UserError("--push-to-hub needs the network but HF_HUB_OFFLINE is set: unset it or drop --push-to-hub")
    token = get_token()
    if not token:
        raise UserError(
            "--push-to-hub needs a Hugging Face token: run `hf auth login` or set HF_TOKEN (or drop --push-to-hub)"
        )
    name = default_repo_name(model, method, dataset) if repo == "auto" else repo
    if "/" in name:
        return name
    try:
        user = HfApi(token=token).whoami()["name"]
    except Exception as err:
        raise UserError(
            f"--push-to-hub: cannot reach the hub with this token ({str(err).splitlines()[0][:200]})"
        ) from None
    return f"{user}/{name}"


def push(out: Path, repo_id: str) -> str:
    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(
        folder_path=str(out),
        repo_id=repo_id,
        ignore_patterns=["checkpoints/*", "logs/*"],
        commit_message="imgtune adapter",
    )
    return f"https://huggingface.co/{repo_id}"
