"""AdaLoRA: LoRA in SVD form whose rank budget is moved, during training, to the layers that need it.

Everything AdaLoRA needs beyond a peft config lives here: the schedule fitted to the run's length,
``update_and_allocate`` after every optimizer step (Trainer never calls it, and without it every
layer silently keeps ``init_r``), the rank pattern that must travel with the weights, the importance
scores a checkpoint keeps for an exact resume, and peft's false alarms on save and load.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import peft
import torch

from imgtune.errors import UserError
from imgtune.tuning.methods.base import AdapterArgs, Method, register

IMPORTANCE = ("ipt", "exp_avg_ipt", "exp_avg_unc")  # the rank allocator's running statistics


def fit_adalora_schedule(tinit: int, tfinal: int, total_steps: int) -> tuple[int, int]:
    """AdaLoRA only reallocates ranks when ``tinit < total_steps - tfinal``; otherwise it
    silently keeps init_r everywhere. Short runs (demo, tests, small data) cannot fit the
    guide's 200/1000, so the warm-up and final phases are scaled to the run's length
    (10% and 30% of it) and the user is told."""
    if tinit < total_steps - tfinal:
        return tinit, tfinal
    new_tinit, new_tfinal = max(1, total_steps // 10), max(1, (3 * total_steps) // 10)
    if new_tinit >= total_steps - new_tfinal:
        raise UserError(
            f"AdaLoRA needs more optimizer steps than {total_steps} to reallocate ranks: "
            "train for more epochs or use a smaller --batch-size/--grad-accum"
        )
    warnings.warn(
        f"AdaLoRA tinit={tinit}, tfinal={tfinal} do not fit {total_steps} optimizer steps; "
        f"using tinit={new_tinit}, tfinal={new_tfinal}",
        stacklevel=2,
    )
    return new_tinit, new_tfinal


@contextlib.contextmanager
def quiet_adalora() -> Iterator[None]:
    """Hide two of peft's (0.21) warnings that are false alarms for AdaLoRA. Loading: "rank_pattern
    keys did not match any targeted module": its generic check reads AdaLoRA's saved rank_pattern, whose
    keys name ``lora_E`` parameters rather than modules, as a LoRA pattern; AdaLoRA applies those ranks
    itself (a reloaded AdaLoRA run predicts exactly as the trained one: tests/test_methods.py). Saving:
    "LoRA tensor(s) have invalid shape ... DeepSpeed ZeRO-3 / FSDP": a module whose rank AdaLoRA
    pruned to 0 is saved as a (0, n) tensor, as it should be."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"The following rank_pattern keys did not match .*lora_E", category=RuntimeWarning
        )
        warnings.filterwarnings("ignore", message=r"Adapter '.*': \d+ LoRA tensor\(s\) have invalid shape")
        yield


def allocator(model: torch.nn.Module):
    return getattr(getattr(model, "base_model", None), "rankallocator", None)


@dataclass(frozen=True)
class AdaLoRA(Method):
    def peft_config(self, a: AdapterArgs) -> peft.AdaLoraConfig:
        opts = dict(a.options)
        tinit, tfinal = fit_adalora_schedule(int(opts.pop("tinit", 200)), int(opts.pop("tfinal", 1000)), a.total_steps)
        # AdaLoraConfig ignores ``r``: the average rank budget is ``target_r``
        return peft.AdaLoraConfig(
            target_r=a.rank,
            lora_alpha=a.alpha,
            lora_dropout=a.dropout,
            target_modules=a.target_modules,
            modules_to_save=a.head_modules,
            total_step=a.total_steps,
            tinit=tinit,
            tfinal=tfinal,
            init_r=int(opts.pop("init_r", 12)),
            deltaT=int(opts.pop("deltaT", 10)),
            **opts,
        )

    def after_step(self, model: torch.nn.Module, step: int) -> None:
        model.base_model.update_and_allocate(step)

    def state(self, model: torch.nn.Module) -> dict[str, Any] | None:
        # AdaLoRA saves its pruned shapes from the config's rank pattern: it must match the weights
        return {"rank_pattern": model.peft_config[model.active_adapter].rank_pattern}

    def load_state(self, model: torch.nn.Module, state: dict[str, Any] | None) -> None:
        if state is not None:
            model.peft_config[model.active_adapter].rank_pattern = state.get("rank_pattern")

    def checkpoint_tensors(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        found = allocator(model)
        if found is None or not found.ipt:
            return {}
        return {
            f"{kind}::{name}": t.detach().cpu().contiguous()
            for kind in IMPORTANCE
            for name, t in getattr(found, kind).items()
        }

    def load_checkpoint_tensors(self, model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        found = allocator(model)
        if found is None:
            return
        found.reset_ipt()
        device = next(model.parameters()).device
        for key, tensor in tensors.items():
            kind, name = key.split("::", 1)
            getattr(found, kind)[name] = tensor.to(device)

    def quiet(self) -> AbstractContextManager:
        return quiet_adalora()

    def named_config(self, config: peft.PeftConfig, adapter_name: str) -> peft.PeftConfig:
        """rank_pattern keys spelled so peft finds their modules under any adapter name. peft (0.21)
        finds a key's module by dropping one dotted part ("...q_proj.lora_E"), or two when the adapter's
        name occurs anywhere in the key, as a substring: an adapter named "y" ("la-y-ers") or "a" drops
        the module's own name and the load fails ("ViTAttention has no attribute lora_E"). A key that ends
        in ".lora_E.<adapter name>" always drops the two parts that are not the module."""
        if config.rank_pattern:
            config.rank_pattern = {
                f"{key.removesuffix('.lora_E')}.lora_E.{adapter_name}" if key.endswith(".lora_E") else key: value
                for key, value in config.rank_pattern.items()
            }
        return config


register(
    AdaLoRA(
        "adalora",
        "LoRA with SVD-style rank budget reallocated during training",
        rank=8,
        alpha=8,
        dropout=0.0,
        options={"init_r": 12, "tinit": 200, "tfinal": 1000, "deltaT": 10},
    )
)
