"""LoRA+ (Hayou et al. 2024): LoRA whose B matrices learn ``loraplus_lr_ratio`` times faster than A.

The adapter is plain LoRA (it saves, loads, merges and serves as LoRA); only the optimizer
differs, built by peft's ``create_loraplus_optimizer``.
"""

from __future__ import annotations

from dataclasses import dataclass

import peft
import torch
from peft.optimizers import create_loraplus_optimizer

from imgtune.config import TrainConfig
from imgtune.errors import UserError
from imgtune.tuning.methods.base import AdapterArgs, Method, register
from imgtune.tuning.methods.lora import lora_config

RATIO = "loraplus_lr_ratio"


@dataclass(frozen=True)
class LoRAPlus(Method):
    def peft_config(self, args: AdapterArgs) -> peft.LoraConfig:
        options = {k: v for k, v in args.options.items() if k != RATIO}  # an optimizer setting, not peft's
        return lora_config(AdapterArgs(**{**args.__dict__, "options": options}))

    def optimizer(self, model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
        ratio = cfg.method_options.get(RATIO, self.options[RATIO])
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio < 1:
            raise UserError(f"{RATIO} must be a number >= 1 (B's learning rate over A's), got {ratio!r}")
        return create_loraplus_optimizer(
            model, torch.optim.AdamW, lr=cfg.lr, loraplus_lr_ratio=float(ratio), weight_decay=cfg.weight_decay
        )


# the paper's and peft's suggested ratio is 16; a rate for A of about half LoRA's is their advice too
register(
    LoRAPlus(
        "loraplus",
        "LoRA with B trained at a higher learning rate than A (LoRA+)",
        rank=16,
        alpha=16,
        dropout=0.1,
        options={RATIO: 16},
        mixed_batch=True,
    )
)
