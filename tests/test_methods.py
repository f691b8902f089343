"""Every method: the seeds' parameter counts, its ViT-B/16 default shape, and train -> save -> reload ->
predict identically -> merge on a tiny ViT. ViT-B/16 is built from its config (no download)."""

import json

import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from conftest import tiny_train_config
from imgtune.config import TrainConfig, load_config
from imgtune.data.loading import make_loader
from imgtune.data.samples import ImageDataset
from imgtune.errors import UserError
from imgtune.inference.predict import Predictor
from imgtune.rundir import LoadedRun, load_run
from imgtune.tuning.methods import METHODS, get_method
from imgtune.tuning.methods.adalora import fit_adalora_schedule
from imgtune.tuning.pretrained import count_parameters
from imgtune.tuning.recipe import train

SEED_COUNTS = {"lora": 667_493, "loha": 1_257_317, "lokr": 116_069, "adalora": 520_325}


@pytest.fixture(scope="module")
def vit_b16_state():
    model = ViTForImageClassification(ViTConfig(num_labels=101))
    return model.config, model.state_dict()


@pytest.mark.parametrize("method", sorted(SEED_COUNTS))
def test_presets_give_the_seeds_trainable_counts(vit_b16_state, method):
    config, state = vit_b16_state
    model = ViTForImageClassification(config)
    model.load_state_dict(state)
    cfg = load_config(f"food101-{method}")
    assert cfg.target_modules == ["query", "value"]  # the seeds' spelling, resolved to q_proj/v_proj
    wrapped = get_method(method).apply(model, cfg, total_steps=3_000)
    trainable, _ = count_parameters(wrapped)
    assert trainable == SEED_COUNTS[method]


def test_adalora_schedule_is_kept_when_it_fits_and_scaled_when_not():
    assert fit_adalora_schedule(200, 1000, 5000) == (200, 1000)
    with pytest.warns(UserWarning, match="do not fit 50"):
        tinit, tfinal = fit_adalora_schedule(200, 1000, 50)
    assert tinit < 50 - tfinal
    with pytest.raises(UserError, match="more optimizer steps"):
        fit_adalora_schedule(200, 1000, 2)


def test_registry_names_and_unknown_method():
    assert {"lora", "dora", "loha", "lokr", "adalora", "vera", "oft", "boft", "ia3", "full", "linear"} <= set(METHODS)
    assert METHODS["lora"].mixed_batch and not METHODS["loha"].mixed_batch
    with pytest.raises(UserError, match="unknown method 'lorra'"):
        get_method("lorra")


# --- every method, end to end on a tiny ViT, and its default shape on ViT-B/16 ---

ALL_METHODS = list(METHODS)


def pixel_batch(predictor: Predictor, paths: list[str]) -> torch.Tensor:
    """The uint8 batch Predictor.predict would feed the model (eval transform)."""
    loader = make_loader(ImageDataset(paths, predictor.transform, predictor.spec.size), len(paths), False, 0, 0)
    return next(iter(loader)).pixel_values


@pytest.fixture(scope="module")
def sample_images(colour_folder) -> list[str]:
    return [str(p) for p in sorted(colour_folder.rglob("*_[0-1].*"))]  # 2 per class, JPEG and PNG


@pytest.mark.parametrize("method", ALL_METHODS)
def test_train_save_reload_predict_merge(tmp_path, tiny_vit, colour_folder, sample_images, method):
    out = tmp_path / method
    result = train(tiny_train_config(tiny_vit, colour_folder, out, method=method, epochs=1))
    saved = load_run(out)
    assert saved.is_adapter == get_method(method).is_adapter

    # the model in memory after training and the one reloaded from disk give the same probabilities
    # merge=False: this checks what was saved, and the merge check below needs saved.model unmerged
    in_memory = Predictor(
        LoadedRun(result.model, saved.processor, saved.labels, saved.is_adapter, out),
        device="cpu",
        precision="fp32",
        merge=False,
    )
    reloaded = Predictor(saved, device="cpu", precision="fp32", merge=False)
    pixels = pixel_batch(reloaded, sample_images)
    p_mem, p_disk = in_memory.probabilities(pixels), reloaded.probabilities(pixels)
    assert torch.equal(p_mem.argmax(1), p_disk.argmax(1))
    if method == "pissa":
        # trained on the residual base, saved as LoRA for the original one: the same function, computed
        # in another order, so equal up to float rounding
        torch.testing.assert_close(p_disk, p_mem, rtol=0, atol=1e-5)
    else:
        assert torch.equal(p_disk, p_mem), (p_disk - p_mem).abs().max()  # bit-identical, not just close
        assert in_memory.predict(sample_images, top_k=3) == reloaded.predict(sample_images, top_k=3)

    # merging folds the adapter into the base weights: a plain transformers model, same logits
    if not saved.is_adapter:
        # full/linear save a plain model: there is no adapter to merge, the directory already is the merged model
        assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
        return
    with torch.no_grad():
        unmerged = saved.model(pixel_values=reloaded.normalize(pixels)).logits
        merged_model = saved.model.merge_and_unload()
        merged = merged_model(pixel_values=reloaded.normalize(pixels)).logits
    assert type(merged_model).__name__ == "ViTForImageClassification"
    assert not any(
        "lora_" in n or "oft_" in n or "boft_" in n or "ia3_" in n or "vera_" in n or "hada_" in n or "lokr_" in n
        for n, _ in merged_model.named_parameters()
    )
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-4)


def test_boft_adapters_are_portable(tmp_path, tiny_vit, colour_folder):
    """peft builds BOFT with one butterfly factor whenever its CUDA extension is missing, whatever the
    config says; the default is 1 so the saved config matches the weights on every machine."""
    train(tiny_train_config(tiny_vit, colour_folder, tmp_path / "boft", method="boft", epochs=1))
    saved = json.loads((tmp_path / "boft" / "adapter_config.json").read_text())
    assert saved["boft_n_butterfly_factor"] == 1 and saved["boft_block_size"] == get_method("boft").rank


# --- ViT-B/16 (the seeds' model) built from its config: the defaults fit and count as documented ---

HEAD = 768 * 101 + 101  # the 101-class Food-101 head, trained and saved with every adapter
TARGETS = 12 * 2  # query and value in 12 layers
VIT_B16_TRAINABLE = {
    **SEED_COUNTS,  # the seeds' figures: the methods' defaults are the seeds' settings
    "dora": SEED_COUNTS["lora"] + TARGETS * 768,  # LoRA + a magnitude per output feature
    "vera": HEAD + TARGETS * (256 + 768),  # lambda_d (r) + lambda_b (out) per layer
    "oft": HEAD + TARGETS * (768 // 16) * (16 * 15 // 2),  # skew-symmetric 16x16 blocks
    "boft": HEAD + TARGETS * ((768 // 4) * 4 * 4 + 768),  # one butterfly factor of 4x4 blocks + scale
    "ia3": HEAD + 12 * (768 + 768 + 3072),  # key and value outputs, fc2 input
    "loraplus": SEED_COUNTS["lora"],  # LoRA's adapter: only the optimizer differs
    "pissa": SEED_COUNTS["lora"],  # LoRA's shape: only the initialisation differs
    "full": 85_876_325,
    "linear": HEAD,
}


@pytest.mark.parametrize("method", ALL_METHODS)
def test_vit_b16_defaults(vit_b16_state, method):
    config, state = vit_b16_state
    base = ViTForImageClassification(config)
    base.load_state_dict(state)
    model = get_method(method).apply(base, TrainConfig(method=method), total_steps=2950)
    trainable, total = count_parameters(model)
    assert trainable == VIT_B16_TRAINABLE[method]
    assert total >= 85_876_325


# --- the methods with training-time behaviour, each one module ---


def test_loraplus_trains_b_faster_than_a(tiny_vit, colour_folder, tmp_path):
    cfg = tiny_train_config(
        tiny_vit, colour_folder, tmp_path / "lp", method="loraplus", method_options={"loraplus_lr_ratio": 8}
    )
    base = ViTForImageClassification.from_pretrained(tiny_vit, num_labels=3, ignore_mismatched_sizes=True)
    model = get_method("loraplus").apply(base, cfg, total_steps=10)
    optimizer = get_method("loraplus").optimizer(model, cfg)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    b_rates = {lr_of[id(p)] for n, p in named.items() if "lora_B" in n}
    a_rates = {lr_of[id(p)] for n, p in named.items() if "lora_A" in n}
    assert b_rates == {cfg.lr * 8} and a_rates == {cfg.lr}
    saved = json.loads((train(cfg).output_dir / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and "loraplus_lr_ratio" not in json.dumps(saved)


def test_loraplus_refuses_a_ratio_below_one(tiny_vit, colour_folder, tmp_path):
    cfg = tiny_train_config(
        tiny_vit, colour_folder, tmp_path / "lp", method="loraplus", method_options={"loraplus_lr_ratio": 0.5}
    )
    with pytest.raises(UserError, match="loraplus_lr_ratio must be a number >= 1"):
        train(cfg)


def test_pissa_is_saved_as_lora_for_the_original_base(tiny_vit, colour_folder, tmp_path, sample_images):
    """The seeds' inference path (the untouched base + the saved adapter) reproduces the trained model,
    although PiSSA trained on a residual base: the saved adapter is the converted rank-2r LoRA."""
    from peft import PeftModel

    result = train(tiny_train_config(tiny_vit, colour_folder, tmp_path / "pissa", method="pissa", epochs=2))
    saved = json.loads((result.output_dir / "adapter_config.json").read_text())
    assert saved["r"] == 2 * get_method("pissa").rank and saved["init_lora_weights"] is True
    assert saved["lora_alpha"] / saved["r"] == get_method("pissa").alpha / get_method("pissa").rank
    run = load_run(result.output_dir)
    original = ViTForImageClassification.from_pretrained(
        tiny_vit, num_labels=3, ignore_mismatched_sizes=True, id2label=run.model.config.id2label
    )
    seeds_way = PeftModel.from_pretrained(original, result.output_dir).eval()
    predictor = Predictor(run, device="cpu", precision="fp32", merge=False)
    pixels = predictor.normalize(pixel_batch(predictor, sample_images))
    with torch.no_grad():
        trained = result.model.eval()(pixel_values=pixels).logits
        reloaded = seeds_way(pixel_values=pixels).logits
    torch.testing.assert_close(reloaded, trained, rtol=0, atol=1e-4)
