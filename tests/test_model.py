import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from imgtune.errors import UserError
from imgtune.tuning.pretrained import head_modules, load_base_model, resolve_model_path, resolve_targets


@pytest.fixture(scope="module")
def vit():
    return ViTForImageClassification(
        ViTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=3,
        )
    )


def test_seed_and_new_projection_names_both_resolve(vit):
    assert resolve_targets(vit, ["query", "value"], ["classifier"]) == ["q_proj", "v_proj"]
    assert resolve_targets(vit, ["q_proj", "v_proj"], ["classifier"]) == ["q_proj", "v_proj"]
    assert resolve_targets(vit, ["intermediate.dense"], ["classifier"]) == ["fc1"]


def test_all_linear_never_wraps_the_head(vit):
    names = resolve_targets(vit, ["all-linear"], head_modules(vit))
    assert "classifier" not in names
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"} <= set(names)


def test_unknown_target_lists_the_real_layers(vit):
    with pytest.raises(UserError, match="'qkv' is not in this model.*q_proj"):
        resolve_targets(vit, ["qkv"], ["classifier"])


def test_head_is_found(vit):
    assert head_modules(vit) == ["classifier"]


def test_base_model_gets_the_label_maps(tiny_vit):
    model = load_base_model(str(tiny_vit), ["cat", "dog", "eel"])
    assert model.config.id2label == {0: "cat", 1: "dog", 2: "eel"}
    assert model.classifier.out_features == 3
    assert isinstance(model, torch.nn.Module)


def test_model_paths(tmp_path, tiny_vit):
    assert resolve_model_path(str(tiny_vit)) == str(tiny_vit.resolve())
    assert resolve_model_path("google/vit-base-patch16-224-in21k") == "google/vit-base-patch16-224-in21k"
    with pytest.raises(UserError, match="not a directory"):
        resolve_model_path(str(tmp_path / "missing"))
