import pytest

from imgtune.config import TrainConfig, list_presets, load_config
from imgtune.errors import UserError


def test_presets_reproduce_the_seed_runs():
    assert {"food101-lora", "food101-loha", "food101-lokr", "food101-adalora"} <= set(list_presets())
    lora = load_config("food101-lora")
    assert (lora.model, lora.dataset, lora.rank, lora.alpha, lora.dropout) == (
        "google/vit-base-patch16-224-in21k",
        "food101",
        16,
        16,
        0.1,
    )
    assert (lora.lr, lora.epochs, lora.batch_size, lora.grad_accum) == (5e-3, 5, 128, 4)
    ada = load_config("food101-adalora")
    assert ada.method == "adalora" and ada.rank == 8
    assert ada.method_options == {"init_r": 12, "tinit": 200, "tfinal": 1000, "deltaT": 10}
    assert load_config("food101-lora-r32").test_from_validation == 0.3
    assert load_config("food101-lora-subset").dataset == "food101:train[:5000]"


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: loha\nepochs: 3\nlr: 0.001\n")
    cfg = load_config(path, epochs=7, batch_size=None)
    assert (cfg.method, cfg.epochs, cfg.lr, cfg.batch_size) == ("loha", 7, 0.001, TrainConfig().batch_size)


def test_saved_config_loads_back(tmp_path):
    cfg = load_config("food101-lokr", epochs=2)
    cfg.save(tmp_path / "imgtune.yaml")
    assert load_config(tmp_path / "imgtune.yaml") == cfg


@pytest.mark.parametrize(
    "text, message",
    [
        ("epochs: [1\n", "not valid YAML"),
        ("- a\n- b\n", "must hold a mapping"),
        ("epoks: 3\n", "unknown setting"),
        ("precision: fp8\n", "unknown precision"),
        ("epochs: 0\n", "--epochs must be at least 1"),
        ("epoks: 3\n", r"epoks \(did you mean epochs\?\)"),
        ("learning_rate: 0.01\n", r"learning_rate \(did you mean lr\?\)"),
        ("epochs: two\n", "setting epochs must be a whole number, got 'two'"),
        ("hflip: maybe\n", "setting hflip must be true or false"),
        # a negative norm would flip the gradients inside clip_grad_norm_ and train in reverse
        ("max_grad_norm: -1\n", r"--max-grad-norm must be at least 0, got -1"),
        ("warmup_ratio: 2\n", r"--warmup-ratio must be in \[0, 1\), got 2"),
        ("weight_decay: -1\n", "--weight-decay must be at least 0"),
        ("num_workers: -1\n", "--num-workers must be at least 0"),
        ("image_size: 0\n", "--image-size must be at least 1"),
        ("dropout: 1\n", r"--dropout must be in \[0, 1\)"),
        ("crop_scale: [0.9, 0.2]\n", "crop_scale must be two numbers"),
        ("crop_scale: [small, big]\n", "crop_scale must be two numbers"),
    ],
)
def test_bad_config_files_are_user_errors(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_config(path)


def test_unknown_preset_names_the_presets():
    with pytest.raises(UserError, match="food101-lora"):
        load_config("food101-lorra")


def test_a_single_string_is_read_as_a_list(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("target_modules: all-linear\nclasses: red, green\n")
    cfg = load_config(path)
    assert cfg.target_modules == ["all-linear"] and cfg.classes == ["red", "green"]


def test_the_recipe_keeps_every_trainer_default_the_seeds_inherit(tmp_path):
    """The seeds write lr, epochs, batch size, eval/save per epoch and best-by-accuracy down; everything
    else they get from TrainingArguments' defaults. Those are imgtune's defaults too, side by side here
    so that a change on either side is noticed."""
    import torch
    from transformers import TrainingArguments

    from imgtune.tuning.methods import get_method
    from imgtune.tuning.recipe import SCHEDULER

    trainer = TrainingArguments(output_dir=str(tmp_path))
    ours = TrainConfig()
    assert ours.max_grad_norm == trainer.max_grad_norm == 1.0  # gradient clipping
    assert ours.weight_decay == trainer.weight_decay
    assert ours.warmup_ratio == 0 and trainer.warmup_steps == 0
    assert ours.seed == trainer.seed
    assert SCHEDULER == trainer.lr_scheduler_type.value
    assert trainer.optim.value.startswith("adamw_torch")
    model = torch.nn.Linear(4, 2)
    optimizer = get_method("lora").optimizer(model, ours)
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert group["betas"] == (trainer.adam_beta1, trainer.adam_beta2) and group["eps"] == trainer.adam_epsilon
    for preset in ("food101-lora", "food101-loha", "food101-lokr", "food101-adalora", "food101-lora-subset"):
        assert load_config(preset).max_grad_norm == trainer.max_grad_norm, preset


def test_clipping_can_be_turned_off():
    assert load_config(None, max_grad_norm=0).max_grad_norm == 0
