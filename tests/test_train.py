import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import read_metrics, tiny_train_config
from imgtune.tuning.recipe import epoch_table, train


def test_lora_run_writes_a_peft_directory_and_metrics(lora_run):
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "metrics.json",
        "imgtune.yaml",
    ):
        assert (lora_run / name).is_file(), name
    metrics = read_metrics(lora_run)
    assert [row["epoch"] for row in metrics["history"]] == [1, 2, 3]
    assert metrics["trainable_params"] < metrics["total_params"]
    assert metrics["adapter_bytes"] == (lora_run / "adapter_model.safetensors").stat().st_size
    assert metrics["train_images_per_s"] > 0 and metrics["wall_time_s"] > 0
    assert metrics["splits"] == {"train": 22, "validation": 8, "test": 0}
    assert metrics["validation"]["accuracy"] == max(r["eval_accuracy"] for r in metrics["history"])
    # the classifier head travels inside the adapter file
    keys = load_file(lora_run / "adapter_model.safetensors").keys()
    assert any("classifier" in k for k in keys) and any("lora_A" in k for k in keys)
    config = json.loads((lora_run / "config.json").read_text())
    assert sorted(config["id2label"].values()) == ["blue", "green", "red"]


def test_colour_classes_are_learned(lora_run):
    assert read_metrics(lora_run)["validation"]["accuracy"] >= 0.75


def test_adalora_reallocates_ranks(tmp_path, tiny_vit, colour_folder):
    cfg = tiny_train_config(
        tiny_vit,
        colour_folder,
        tmp_path / "ada",
        method="adalora",
        epochs=6,
        batch_size=4,
        method_options={"init_r": 6, "deltaT": 1},
        rank=2,
    )
    result = train(cfg)
    peft_config = result.model.peft_config["default"]
    assert peft_config.total_step > peft_config.tinit + peft_config.tfinal
    ranks = peft_config.rank_pattern
    assert ranks, "update_and_allocate never ran: no rank pattern"
    kept = {name: int(torch.as_tensor(mask).sum()) for name, mask in ranks.items()}
    assert any(k != 6 for k in kept.values()), f"ranks stayed at init_r: {kept}"
    saved = json.loads((tmp_path / "ada" / "adapter_config.json").read_text())
    assert saved["rank_pattern"]


@pytest.mark.parametrize("method", ["full", "linear"])
def test_no_adapter_methods_save_plain_models(tmp_path, tiny_vit, colour_folder, method):
    result = train(tiny_train_config(tiny_vit, colour_folder, tmp_path / method, method=method, epochs=1))
    assert (tmp_path / method / "model.safetensors").is_file()
    assert not (tmp_path / method / "adapter_config.json").exists()
    trainable, total = result.metrics["trainable_params"], result.metrics["total_params"]
    assert (trainable == total) if method == "full" else (trainable == 32 * 3 + 3)


def test_epoch_table_has_the_seeds_columns():
    table = epoch_table([{"epoch": 1, "train_loss": 0.7762, "eval_loss": 0.437225, "eval_accuracy": 0.9}])
    assert table.splitlines()[0] == "Epoch | Training Loss | Validation Loss | Accuracy"
    assert "0.776200" in table and "0.437225" in table
