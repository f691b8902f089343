"""--push-to-hub fails before training when it cannot work; never touches the network here."""

import pytest

from conftest import run_cli
from imgtune.errors import UserError
from imgtune.tuning.hub import check_push, default_repo_name


def test_default_repo_name_follows_the_seeds():
    assert (
        default_repo_name("google/vit-base-patch16-224-in21k", "lora", "food101:train[:5000]")
        == "vit-base-patch16-224-in21k-finetuned-lora-food101"
    )
    assert default_repo_name("/models/tiny-vit/", "loha", "/data/photos") == "tiny-vit-finetuned-loha-photos"


def test_offline_push_fails_before_training(tmp_path, tiny_vit, colour_folder):
    out = tmp_path / "run"
    proc = run_cli(
        "train",
        "--model",
        tiny_vit,
        "--dataset",
        colour_folder,
        "--output-dir",
        out,
        "--push-to-hub",
        "auto",
        "--report-to",
        "none",
    )
    assert proc.returncode == 2
    assert "HF_HUB_OFFLINE is set" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (out / "checkpoints").exists()  # nothing trained


def test_push_without_a_token_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no stored token either
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))
    with pytest.raises(UserError, match="needs a Hugging Face token"):
        check_push("auto", "m", "lora", "d")
