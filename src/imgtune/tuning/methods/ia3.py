"""IA3: learned rescaling vectors on keys, values and the MLP output."""

from __future__ import annotations

from dataclasses import dataclass

import peft

from imgtune.tuning.methods.base import AdapterArgs, Method, register

FEEDFORWARD = ("fc2", "output.dense")  # IA3 scales these layers' inputs, the others' outputs


@dataclass(frozen=True)
class IA3(Method):
    def peft_config(self, a: AdapterArgs) -> peft.IA3Config:
        feedforward = [t for t in a.target_modules if t in FEEDFORWARD]
        return peft.IA3Config(
            target_modules=a.target_modules,
            feedforward_modules=feedforward,
            modules_to_save=a.head_modules,
            **a.options,
        )


register(IA3("ia3", "Learned rescaling of keys, values and the MLP output", target_modules=("key", "value", "fc2")))
