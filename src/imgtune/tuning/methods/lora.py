"""LoRA (Hu et al. 2021) and DoRA (weight-decomposed LoRA): a low-rank update B@A on each target."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import peft

from imgtune.tuning.methods.base import AdapterArgs, Method, register


def lora_config(a: AdapterArgs, **extra: Any) -> peft.LoraConfig:
    return peft.LoraConfig(
        r=a.rank,
        lora_alpha=a.alpha,
        lora_dropout=a.dropout,
        bias="none",
        target_modules=a.target_modules,
        modules_to_save=a.head_modules,
        **{**a.options, **extra},
    )


@dataclass(frozen=True)
class LoRA(Method):
    def peft_config(self, args: AdapterArgs) -> peft.LoraConfig:
        return lora_config(args)


@dataclass(frozen=True)
class DoRA(Method):
    def peft_config(self, args: AdapterArgs) -> peft.LoraConfig:
        return lora_config(args, use_dora=True)


register(
    LoRA(
        "lora", "Low-rank update B@A on each target (Hu et al. 2021)", rank=16, alpha=16, dropout=0.1, mixed_batch=True
    )
)
register(
    DoRA("dora", "LoRA with a learned magnitude per output (weight-decomposed LoRA)", rank=16, alpha=16, dropout=0.1)
)
