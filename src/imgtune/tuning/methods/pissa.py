"""PiSSA (Meng et al. 2024): LoRA initialised from the principal singular vectors of each target.

peft moves the top-r singular directions out of the base weights into A and B, so during training
the base in memory is a *residual* base. A run directory must work on the original base (the seeds'
inference snippet, merge, serve), so the adapter is saved converted: with A0, B0 the initial
factors, ``A' = [A; A0]`` and ``B' = [B, -B0]`` give ``B'A' = BA - B0A0``, the change to the original
weights, as a plain LoRA adapter of rank 2r (alpha doubled, the scale kept).

peft can do this conversion (``save_pretrained(path_initial_model_for_weight_conversion=...)``),
but its converted file keeps only the lora_A/lora_B tensors and drops ``modules_to_save``, which
is our classifier head; so the conversion is done here, on peft's own state dict.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import peft
import torch
from peft.utils import SAFETENSORS_WEIGHTS_NAME, get_peft_model_state_dict
from safetensors.torch import save_file

from imgtune.config import TrainConfig
from imgtune.tuning.methods.base import AdapterArgs, Method, register
from imgtune.tuning.methods.lora import lora_config

INITIAL = "_imgtune_pissa_initial"  # the initial A0/B0, kept on the model for the conversion at save time


def lora_factors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's lora_A/lora_B tensors by their saved names."""
    return {
        k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items() if ".lora_A." in k or ".lora_B." in k
    }


def converted_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    initial = getattr(model, INITIAL)
    state = {}
    for key, tensor in get_peft_model_state_dict(model).items():
        if ".lora_A." in key:
            tensor = torch.cat([tensor, initial[key]], dim=0)
        elif ".lora_B." in key:
            tensor = torch.cat([tensor, -initial[key]], dim=1)
        state[key] = tensor.detach().cpu().contiguous()
    return state


@dataclass(frozen=True)
class PiSSA(Method):
    def peft_config(self, args: AdapterArgs) -> peft.LoraConfig:
        return lora_config(args, init_lora_weights=args.options.get("init_lora_weights", "pissa"))

    def apply(self, model: torch.nn.Module, cfg: TrainConfig, total_steps: int) -> torch.nn.Module:
        # the SVD is deterministic, so a resumed run recomputes the same residual base and A0/B0
        wrapped = super().apply(model, cfg, total_steps)
        object.__setattr__(wrapped, INITIAL, lora_factors(wrapped))  # a plain attribute, not a submodule
        return wrapped

    def save(self, model: torch.nn.Module, out: Path) -> None:
        config = copy.deepcopy(model.peft_config[model.active_adapter])
        config.init_lora_weights = True  # loads as plain LoRA on the original base
        config.r *= 2
        config.lora_alpha *= 2  # alpha / r unchanged
        config.inference_mode = True
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = model.get_base_model().name_or_path
        out.mkdir(parents=True, exist_ok=True)
        save_file(converted_state(model), str(out / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})
        base_class = type(model.get_base_model())
        # what peft writes for a model without a task type, so AutoPeftModel can find the class
        config.save_pretrained(
            str(out),
            auto_mapping_dict={"base_model_class": base_class.__name__, "parent_library": base_class.__module__},
        )
        model.create_or_update_model_card(str(out))


register(
    PiSSA(
        "pissa",
        "LoRA initialised from the principal singular vectors (PiSSA), saved as plain LoRA",
        rank=16,
        alpha=16,
        dropout=0.0,
        mixed_batch=True,
    )
)
