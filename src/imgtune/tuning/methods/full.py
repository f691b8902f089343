"""No adapter: every weight trained (``full``), or only the classifier head (``linear``, a linear probe).
The run directory then holds a whole transformers model."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from imgtune.config import TrainConfig
from imgtune.tuning.methods.base import Method, register
from imgtune.tuning.pretrained import head_modules, is_under


@dataclass(frozen=True)
class Full(Method):
    def apply(self, model: torch.nn.Module, cfg: TrainConfig, total_steps: int) -> torch.nn.Module:
        return model.requires_grad_(True)


@dataclass(frozen=True)
class Linear(Method):
    def apply(self, model: torch.nn.Module, cfg: TrainConfig, total_steps: int) -> torch.nn.Module:
        head = head_modules(model)
        for name, param in model.named_parameters():
            param.requires_grad_(is_under(name, head))
        return model


register(Full("full", "Every weight trained (no adapter): the expensive baseline", target_modules=(), is_adapter=False))
register(
    Linear(
        "linear",
        "Backbone frozen, only the classifier head trained (linear probe)",
        target_modules=(),
        is_adapter=False,
    )
)
