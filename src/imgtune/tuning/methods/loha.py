"""LoHa: the update is the Hadamard product of two low-rank pairs."""

from __future__ import annotations

from dataclasses import dataclass

import peft

from imgtune.tuning.methods.base import AdapterArgs, Method, register


@dataclass(frozen=True)
class LoHa(Method):
    def peft_config(self, a: AdapterArgs) -> peft.LoHaConfig:
        return peft.LoHaConfig(
            r=a.rank,
            alpha=a.alpha,
            module_dropout=a.dropout,
            target_modules=a.target_modules,
            modules_to_save=a.head_modules,
            **a.options,
        )


register(LoHa("loha", "Low-rank Hadamard product of two LoRA pairs", rank=16, alpha=16, dropout=0.1))
