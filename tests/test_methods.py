"""The seeds' published trainable-parameter counts, on ViT-B/16 built from its config (no download)."""
import pytest
from transformers import ViTConfig, ViTForImageClassification

from imgtune.config import load_config
from imgtune.methods import METHODS, fit_adalora_schedule, get_method
from imgtune.errors import UserError
from imgtune.model import apply_method, count_parameters

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
    wrapped = apply_method(model, get_method(method), cfg, total_steps=3_000)
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
