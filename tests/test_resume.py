"""Resume in-process: from any checkpoint (even copied elsewhere), AdaLoRA included, bit for bit;
and the guards around it (changed settings, earlier runs in the same OUT, bad flags)."""

import json
import shutil

import pytest
from safetensors.torch import load_file

from conftest import read_metrics, tiny_train_config
from imgtune.errors import UserError
from imgtune.tuning.checkpoint import MANIFEST, complete_checkpoints, find_checkpoint, run_of, verify
from imgtune.tuning.recipe import TIMING_FIELDS, train


def reproducible(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_FIELDS}


def assert_same_run(a, b):
    assert reproducible(read_metrics(a)) == reproducible(read_metrics(b))
    wa, wb = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa)


def test_resume_from_a_checkpoint_copied_elsewhere(tmp_path, tiny_vit, colour_folder):
    # 22 training images in batches of 4: 6 steps an epoch; the best epoch is usually not the last
    cfg = tiny_train_config(
        tiny_vit, colour_folder, tmp_path / "straight", epochs=3, batch_size=4, save_steps=4, save_total_limit=None
    )
    train(cfg)
    copied = tmp_path / "elsewhere" / "checkpoint-16"
    shutil.copytree(tmp_path / "straight" / "checkpoints" / "checkpoint-16", copied)  # epoch 3, 4 batches in
    state = json.loads((copied / "trainer_state.json").read_text())
    assert (state["epoch"], state["batches_done"]) == (3, 4)
    # the best weights travel inside the checkpoint, whichever epoch was best
    assert (copied / "best.safetensors").is_file()

    train(cfg.replace(output_dir=str(tmp_path / "resumed"), resume=str(copied)))
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


# modules pruned to rank 0 are saved as (0, n) tensors: peft's ZeRO-3 alarm about them must stay hidden
@pytest.mark.filterwarnings(r"error:.*LoRA tensor\(s\) have invalid shape")
def test_adalora_resumes_exactly_during_and_after_rank_allocation(tmp_path, tiny_vit, colour_folder):
    # 18 steps: importance is tracked and ranks cut from step 3 to 13, frozen at 14 (tfinal 4)
    cfg = tiny_train_config(
        tiny_vit,
        colour_folder,
        tmp_path / "straight",
        method="adalora",
        rank=2,
        epochs=3,
        batch_size=4,
        method_options={"init_r": 6, "deltaT": 1, "tinit": 2, "tfinal": 4},
        save_steps=2,
        save_total_limit=None,
    )
    train(cfg)
    checkpoints = tmp_path / "straight" / "checkpoints"
    assert (checkpoints / "checkpoint-8" / "method_state.safetensors").is_file()  # mid-allocation
    assert not (checkpoints / "checkpoint-16" / "method_state.safetensors").exists()  # reset when frozen
    for step in (8, 16):
        resumed = tmp_path / f"from-{step}"
        train(cfg.replace(output_dir=str(resumed), resume=str(checkpoints / f"checkpoint-{step}")))
        assert_same_run(tmp_path / "straight", resumed)
        patterns = [
            json.loads((d / "adapter_config.json").read_text())["rank_pattern"]
            for d in (tmp_path / "straight", resumed)
        ]
        assert patterns[0] and patterns[0] == patterns[1]


def test_the_loader_worker_count_does_not_change_the_result(tmp_path, tiny_vit, colour_folder):
    for workers in (0, 2):
        train(
            tiny_train_config(
                tiny_vit, colour_folder, tmp_path / f"w{workers}", epochs=2, batch_size=4, num_workers=workers
            )
        )
    assert_same_run(tmp_path / "w0", tmp_path / "w2")


def test_resume_with_other_settings_is_refused(tmp_path, tiny_vit, colour_folder):
    cfg = tiny_train_config(tiny_vit, colour_folder, tmp_path / "run", epochs=1)
    train(cfg)
    with pytest.raises(UserError, match=r"other settings: lr=0\.005 \(now 0\.001\)"):
        train(cfg.replace(lr=1e-3, resume="auto"))
    # run-control flags may change
    train(cfg.replace(resume="auto", save_total_limit=3, logging_steps=1))


def test_an_earlier_run_in_the_same_output_dir(tmp_path, tiny_vit, colour_folder, caplog):
    caplog.set_level("INFO", logger="imgtune")
    out = tmp_path / "run"
    cfg = tiny_train_config(tiny_vit, colour_folder, out, epochs=2, batch_size=4, save_steps=2, save_total_limit=1)
    train(cfg.replace(save_total_limit=None))
    root = out / "checkpoints"
    # make it an unfinished run, as if killed: only a mid-epoch checkpoint is left
    for path in complete_checkpoints(root):
        if path.name != "checkpoint-4":
            shutil.rmtree(path)
    first = run_of(root / "checkpoint-4")

    train(cfg)  # no --resume: starts afresh and moves the unfinished run out of its way
    aside = root / f"earlier-{first}"
    assert f"moved an unfinished earlier run's checkpoints to {aside}" in caplog.text
    caplog.clear()
    assert run_of(aside / "checkpoint-4") == first and find_checkpoint(out, str(aside / "checkpoint-4"))
    second = {run_of(p) for p in complete_checkpoints(root)}
    assert len(second) == 1 and first not in second
    assert [p.name for p in complete_checkpoints(root)][-1] == "checkpoint-12"

    count = len(complete_checkpoints(root))
    train(cfg)  # the previous run finished: its checkpoints are replaced, the set-aside run stays
    said = caplog.text
    assert f"removed {count} checkpoint(s) of a finished earlier run" in said and "moved an unfinished" not in said
    third = {run_of(p) for p in complete_checkpoints(root)}
    assert len(third) == 1 and not third & (second | {first})
    assert run_of(aside / "checkpoint-4") == first


@pytest.mark.parametrize("flag,value", [("save_steps", 0), ("save_total_limit", 0)])
def test_bad_save_flags(tmp_path, tiny_vit, colour_folder, flag, value):
    with pytest.raises(UserError, match=f"--{flag.replace('_', '-')} must be at least 1"):
        train(tiny_train_config(tiny_vit, colour_folder, tmp_path / "run", **{flag: value}))


def test_unreadable_manifest_is_a_user_error(tmp_path, tiny_vit, colour_folder):
    out = tmp_path / "run"
    train(tiny_train_config(tiny_vit, colour_folder, out, epochs=1))
    newest = complete_checkpoints(out / "checkpoints")[-1]
    (newest / MANIFEST).write_text("{not json")
    assert find_checkpoint(out, "auto") is None  # never picked automatically
    with pytest.raises(UserError, match="unreadable COMPLETE manifest"):
        verify(find_checkpoint(out, str(newest)))


def test_interrupted_during_validation_right_after_a_step_checkpoint(tmp_path, tiny_vit, colour_folder, monkeypatch):
    """A step checkpoint on an epoch's last batch, then Ctrl-C while that epoch validates: the resumed
    run has nothing left of that epoch to train (an empty sampler) and must carry on to validation."""
    from imgtune.tuning.recipe import Recipe

    # 22 training images in batches of 4: 6 steps an epoch, so save_steps=6 saves on each epoch's last batch
    cfg = tiny_train_config(tiny_vit, colour_folder, tmp_path / "run", epochs=2, batch_size=4, save_steps=6)
    train(cfg.replace(output_dir=str(tmp_path / "straight")))
    validate = Recipe.end_epoch

    def interrupted(self, epoch):
        raise KeyboardInterrupt

    monkeypatch.setattr(Recipe, "end_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    state = json.loads((tmp_path / "run" / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    assert (state["epoch"], state["batches_done"]) == (1, 6)  # the whole epoch consumed, not yet validated
    monkeypatch.setattr(Recipe, "end_epoch", validate)
    train(cfg.replace(resume="auto"))
    assert_same_run(tmp_path / "straight", tmp_path / "run")
