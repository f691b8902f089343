"""Every common backbone family, out of the box: a tiny model of each, built from its config and saved
offline, trains with imgtune's defaults (no --target-modules), predicts every image, merges to the same
logits and serves. The family defaults themselves live in imgtune.tuning.families."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import transformers as tf
from transformers import AutoModelForImageClassification, ViTImageProcessor

from conftest import tiny_train_config, write_class_folder
from imgtune.config import TrainConfig
from imgtune.data.loading import make_loader
from imgtune.data.samples import ImageDataset
from imgtune.errors import UserError
from imgtune.inference.merge import merged_model
from imgtune.inference.predict import Predictor
from imgtune.rundir import load_run
from imgtune.serve.engine import MultiAdapterModel
from imgtune.tuning.methods import get_method
from imgtune.tuning.pretrained import count_parameters, head_modules, resolve_targets
from imgtune.tuning.recipe import train

HAS_TIMM = importlib.util.find_spec("timm") is not None
NO_TIMM = "timm is not installed (pip install 'imgtune[timm]')"
SIZE = 32


# what a timm checkpoint on the hub carries in its config.json instead of a preprocessor_config.json
TIMM_DATA = {"input_size": [3, SIZE, SIZE], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def timm(architecture: str, **model_args):
    return lambda: tf.TimmWrapperConfig(
        architecture=architecture, model_args=model_args, num_labels=2, pretrained_cfg=TIMM_DATA
    )


# family -> (config builder, head Linear layers, default targets); sizes kept tiny (hidden 8-32, 1-2 stages)
BACKBONES = {
    # layer scale 1 instead of 1e-6: at 1e-6 a random tiny ConvNeXt's blocks (and adapters) barely count
    "convnext": (
        lambda: tf.ConvNextConfig(
            num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], layer_scale_init_value=1.0, num_labels=2
        ),
        ["classifier"],
        ["pwconv1", "pwconv2"],
    ),
    "convnextv2": (
        lambda: tf.ConvNextV2Config(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=2),
        ["classifier"],
        ["pwconv1", "pwconv2"],
    ),
    "resnet": (
        lambda: tf.ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=2
        ),
        ["classifier.1"],
        ["layer.0.convolution", "layer.1.convolution"],
    ),
    "swin": (
        lambda: tf.SwinConfig(
            image_size=SIZE, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=2
        ),
        ["classifier"],
        ["q_proj", "v_proj"],
    ),
    "dinov2": (
        lambda: tf.Dinov2Config(
            image_size=SIZE, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2
        ),
        ["classifier"],
        ["q_proj", "v_proj"],
    ),
    "efficientnet": (
        lambda: tf.EfficientNetConfig(
            image_size=SIZE, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128, num_labels=2
        ),
        ["classifier"],
        ["expand_conv", "project_conv"],
    ),
    "mobilevit": (
        lambda: tf.MobileViTConfig(
            image_size=SIZE, hidden_sizes=[16, 24, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64], num_labels=2
        ),
        ["classifier"],
        ["query", "value"],
    ),
    "timm-vit": (
        timm("vit_tiny_patch16_224", img_size=SIZE, patch_size=8, embed_dim=32, depth=1, num_heads=2),
        ["timm_model.head"],
        ["qkv"],
    ),
    # timm zero-initialises each block's last BatchNorm: the random blocks, adapters included, would add nothing
    "timm-resnet": (
        timm("resnet18", layers=(1, 1, 1, 1), channels=(8, 8, 16, 16), stem_width=8, zero_init_last=False),
        ["timm_model.fc"],
        ["conv1", "conv2"],
    ),
    "timm-convnext": (
        timm("convnext_atto", dims=(8, 8, 16, 16), depths=(1, 1, 1, 1), conv_mlp=False, ls_init_value=1.0),
        ["timm_model.head.fc"],
        ["fc1", "fc2"],
    ),
}


def backbone(name: str):
    """A test parameter: timm's families are skipped, with the reason, where timm is not installed."""
    return pytest.param(name, marks=pytest.mark.skipif(name.startswith("timm") and not HAS_TIMM, reason=NO_TIMM))


FAMILIES = [backbone(name) for name in BACKBONES]


def build(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForImageClassification.from_config(BACKBONES[family][0]())


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> a saved tiny model directory (made on first use)."""
    root, made = tmp_path_factory.mktemp("backbones"), {}

    def get(family: str):
        if family not in made:
            path = root / family
            build(family).save_pretrained(path)
            if not family.startswith("timm"):  # timm's processor is read from pretrained_cfg in config.json
                ViTImageProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(path)
            made[family] = path
        return made[family]

    return get


@pytest.fixture(scope="module")
def trained(tmp_path_factory, saved, colour_folder):
    """family -> (output dir, TrainResult) of a one-epoch run with every default (LoRA, no targets given)."""
    root, done = tmp_path_factory.mktemp("backbone-runs"), {}

    def get(family: str):
        if family not in done:
            out = root / family
            done[family] = out, train(tiny_train_config(saved(family), colour_folder, out, epochs=1))
        return done[family]

    return get


def pixel_batch(predictor: Predictor, paths: list[str]) -> torch.Tensor:
    loader = make_loader(ImageDataset(paths, predictor.transform, predictor.spec.size), len(paths), False, 0, 0)
    return next(iter(loader)).pixel_values


@pytest.mark.parametrize("family", FAMILIES)
def test_head_is_found_and_kept_out_of_all_linear(family):
    model = build(family)
    head = head_modules(model)
    assert head == BACKBONES[family][1]
    try:
        names = resolve_targets(model, ["all-linear"], head)
    except UserError as err:  # a pure convnet: no Linear outside its head
        assert "no Linear layers outside its head" in str(err) and "Conv2d layers are" in str(err)
        return
    wrapped = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith(tuple(names))]
    assert wrapped and not set(wrapped) & set(head)


@pytest.mark.parametrize("family", FAMILIES)
def test_defaults_train_predict_and_merge(family, trained, colour_folder):
    out, result = trained(family)
    saved_config = json.loads((out / "adapter_config.json").read_text())
    assert sorted(saved_config["target_modules"]) == sorted(BACKBONES[family][2])
    assert sorted(saved_config["modules_to_save"]) == sorted(BACKBONES[family][1])

    # trained: adapter weights besides the head, and the head copy moved away from the base's
    head_params = sum(p.numel() for n, p in result.model.named_parameters() if ".modules_to_save." in n)
    trainable, _ = count_parameters(result.model)
    assert head_params > 0 and trainable > head_params

    run = load_run(out)
    predictor = Predictor(run, device="cpu", precision="fp32", merge=False)
    if family.startswith("timm"):  # timm's own size and normalisation, not ViT's defaults
        assert (predictor.spec.size, predictor.spec.mean) == (SIZE, tuple(TIMM_DATA["mean"]))
    images = sorted(str(p) for p in colour_folder.rglob("*.*"))
    results, skipped = predictor.predict(images, top_k=3)
    assert not skipped and [r["image"] for r in results] == images
    assert all(len(r["predictions"]) == 3 for r in results)

    pixels = predictor.normalize(pixel_batch(predictor, images[:8]))
    with torch.no_grad():
        unmerged = run.model(pixel_values=pixels).logits
        with run.model.disable_adapter():  # the adapter does something: without it the logits differ
            bare = run.model(pixel_values=pixels).logits
        merged = merged_model(run)
        folded = merged(pixel_values=pixels).logits
    assert not isinstance(merged, type(run.model)) and (bare - unmerged).abs().max() > 1e-6
    torch.testing.assert_close(folded, unmerged, rtol=0, atol=1e-4)
    # what `imgtune merge` writes loads as a plain transformers model and gives the same logits
    merged.save_pretrained(out.parent / f"{family}-merged")
    reloaded = AutoModelForImageClassification.from_pretrained(out.parent / f"{family}-merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixels).logits, unmerged, rtol=0, atol=1e-4)


@pytest.mark.parametrize(("family", "method"), [("resnet", "vera"), ("efficientnet", "pissa"), ("resnet", "oft")])
def test_linear_only_methods_on_a_pure_convnet_say_what_to_do(family, method):
    with pytest.raises(UserError, match=rf"^{method} wraps Linear layers only .* --method lora, dora, loha") as caught:
        get_method(method).adapter_args(build(family), TrainConfig(method=method), 10)
    assert "\n" not in str(caught.value)


def test_methods_peft_breaks_on_a_family_are_refused():
    with pytest.raises(UserError, match=r"^oft does not work on convnext models .*\(N, H, W, C\)"):
        get_method("oft").adapter_args(build("convnext"), TrainConfig(method="oft"), 10)
    with pytest.raises(UserError, match="^oft wraps Linear layers only .* convolution are not Linear"):
        get_method("oft").adapter_args(build("resnet"), TrainConfig(method="oft", target_modules=["convolution"]), 10)


def test_linear_methods_on_convnext_get_its_linear_mlp():
    args = get_method("vera").adapter_args(build("convnext"), TrainConfig(method="vera"), 10)
    assert args.target_modules == ["pwconv1", "pwconv2"] and args.head_modules == ["classifier"]


@pytest.mark.parametrize("name", [backbone("resnet"), backbone("timm-vit")])
def test_linear_probe_trains_the_head_only(name, tmp_path, saved, colour_folder):
    result = train(tiny_train_config(saved(name), colour_folder, tmp_path / "linear", method="linear", epochs=1))
    trainable = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert trainable == {f"{h}.{k}" for h in BACKBONES[name][1] for k in ("weight", "bias")}


def test_other_methods_on_a_convnet_train_and_merge(tmp_path, saved, colour_folder):
    """LoHa and IA3 on ResNet's convs: peft's non-LoRA unload needs the head saved as its Linear layer."""
    for method in ("loha", "ia3"):
        out = tmp_path / method
        train(tiny_train_config(saved("resnet"), colour_folder, out, method=method, epochs=1))
        run = load_run(out)
        predictor = Predictor(run, device="cpu", precision="fp32", merge=False)
        pixels = predictor.normalize(pixel_batch(predictor, sorted(str(p) for p in colour_folder.rglob("*_0.*"))))
        with torch.no_grad():
            unmerged = run.model(pixel_values=pixels).logits
            merged = merged_model(run)(pixel_values=pixels).logits
        torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-4)


def test_serve_engine_on_a_convnet_matches_the_predictor(tmp_path, saved, trained, colour_folder):
    """ResNet's head is Flatten + Linear: a second adapter with another class count gets its head Linear
    rebuilt inside that copy, and each adapter answers as its own Predictor does."""
    out, _ = trained("resnet")
    two = write_class_folder(tmp_path / "two", per_class=6, classes={"red": (200, 40, 40), "blue": (40, 60, 200)})
    train(tiny_train_config(saved("resnet"), two, tmp_path / "b", epochs=1))
    engine = MultiAdapterModel(
        str(saved("resnet")), [("a", out), ("b", tmp_path / "b")], device="cpu", precision="fp32"
    )
    image = sorted(colour_folder.rglob("*.png"))[0]
    for name, path, classes in (("a", out, 3), ("b", tmp_path / "b", 2)):
        predictor = Predictor(load_run(path), device="cpu", precision="fp32", merge=False)
        want = predictor.probabilities(pixel_batch(predictor, [str(image)]))[0]
        got = engine.probabilities([name], [engine.preprocess(name, image.read_bytes())])[0]
        assert got.shape == (classes,)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def whole_head_adapter(path, base_dir, labels: list[str]):
    """A plain peft LoRA adapter (not imgtune's) that saves ResNet's whole ``classifier`` (Flatten + Linear)."""
    import peft

    base = AutoModelForImageClassification.from_pretrained(
        base_dir, num_labels=len(labels), id2label=dict(enumerate(labels)), ignore_mismatched_sizes=True
    )
    config = peft.LoraConfig(r=4, target_modules=["layer.0.convolution"], modules_to_save=["classifier"])
    model = peft.get_peft_model(base, config)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(0, 0.5)
    model.save_pretrained(path)
    model.get_base_model().config.save_pretrained(path)
    ViTImageProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(path)
    return path


def test_serve_engine_fits_a_whole_sequential_head_of_another_size(tmp_path, saved, colour_folder):
    """Two such adapters, three and two classes, on one base: the Linear inside the second one's head copy
    is rebuilt at its size, and each answers as its own Predictor does."""
    paths = {
        "x": whole_head_adapter(tmp_path / "x", saved("resnet"), ["red", "green", "blue"]),
        "y": whole_head_adapter(tmp_path / "y", saved("resnet"), ["red", "blue"]),
    }
    engine = MultiAdapterModel(str(saved("resnet")), list(paths.items()), device="cpu", precision="fp32")
    image = sorted(colour_folder.rglob("*.png"))[0]
    for name, path in paths.items():
        predictor = Predictor(load_run(path), device="cpu", precision="fp32", merge=False)
        want = predictor.probabilities(pixel_batch(predictor, [str(image)]))[0]
        got = engine.probabilities([name], [engine.preprocess(name, image.read_bytes())])[0]
        assert got.shape == want.shape == (len(engine.adapters[name].labels),)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
