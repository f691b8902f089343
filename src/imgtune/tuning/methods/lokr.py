"""LoKr: the update is a Kronecker product with a low-rank factor."""

from __future__ import annotations

from dataclasses import dataclass

import peft

from imgtune.tuning.methods.base import AdapterArgs, Method, register


@dataclass(frozen=True)
class LoKr(Method):
    def peft_config(self, a: AdapterArgs) -> peft.LoKrConfig:
        return peft.LoKrConfig(
            r=a.rank,
            alpha=a.alpha,
            module_dropout=a.dropout,
            target_modules=a.target_modules,
            modules_to_save=a.head_modules,
            **a.options,
        )


register(LoKr("lokr", "Low-rank Kronecker product", rank=16, alpha=16, dropout=0.1))
