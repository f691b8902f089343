"""VeRA: frozen random projections shared by every layer, trained scaling vectors."""

from __future__ import annotations

from dataclasses import dataclass

import peft

from imgtune.tuning.methods.base import AdapterArgs, Method, register


@dataclass(frozen=True)
class VeRA(Method):
    def peft_config(self, a: AdapterArgs) -> peft.VeraConfig:
        return peft.VeraConfig(
            r=a.rank,
            vera_dropout=a.dropout,
            target_modules=a.target_modules,
            modules_to_save=a.head_modules,
            **a.options,
        )


register(VeRA("vera", "Shared frozen random projections, trained scaling vectors", rank=256, dropout=0.0))
