"""What a fine-tuning method is: one object that says how it is applied to a model, what it does
after each optimizer step, what extra state a checkpoint keeps for it, and how it is saved.

The recipe, the checkpoints, the run directory and the server call these hooks and never test a
method's name; a method with training-time behaviour overrides them in its own module.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import peft
import torch

from imgtune.config import TrainConfig
from imgtune.errors import UserError
from imgtune.tuning.families import choose_targets
from imgtune.tuning.pretrained import head_modules

ATTN_QV = ("query", "value")


@dataclass(frozen=True)
class AdapterArgs:
    """Everything a peft config builder needs, already resolved against the loaded model."""

    rank: int
    alpha: float
    dropout: float
    target_modules: list[str]
    head_modules: list[str]
    options: dict[str, Any]
    total_steps: int


@dataclass(frozen=True)
class Method:
    """A method's name, its ViT defaults and its hooks. Subclasses override ``peft_config`` (adapters)
    or ``apply`` (plain weight training) and whichever hooks they need."""

    name: str
    summary: str
    rank: int = 0
    alpha: float = 0.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ATTN_QV
    options: dict[str, Any] = field(default_factory=dict)
    mixed_batch: bool = False  # peft's adapter_names mixed-batch forward works (LoRA family only)
    is_adapter: bool = True  # False: the run directory holds a whole transformers model

    # --- building ---------------------------------------------------------------------

    def peft_config(self, args: AdapterArgs) -> peft.PeftConfig:
        raise NotImplementedError(f"{self.name} builds no peft config")

    def adapter_args(self, model: torch.nn.Module, cfg: TrainConfig, total_steps: int) -> AdapterArgs:
        """The method's defaults with the config's choices on top, target names resolved for this model
        (without --target-modules, a model lacking the method's ViT targets gets its family's: families.py)."""
        head = head_modules(model)
        adapters = [name for name, method in METHODS.items() if method.is_adapter]  # named in hints
        targets = choose_targets(model, self.name, cfg.target_modules, list(self.target_modules), head, adapters)
        return AdapterArgs(
            rank=int(cfg.rank if cfg.rank is not None else self.rank),
            alpha=float(cfg.alpha if cfg.alpha is not None else self.alpha),
            dropout=float(cfg.dropout if cfg.dropout is not None else self.dropout),
            target_modules=targets,
            head_modules=head,
            options={**self.options, **cfg.method_options},
            total_steps=total_steps,
        )

    def apply(self, model: torch.nn.Module, cfg: TrainConfig, total_steps: int) -> torch.nn.Module:
        """The model ready to train: wrapped with this method's adapter (frozen base, trainable head)."""
        config = self.peft_config(self.adapter_args(model, cfg, total_steps))
        try:
            return peft.get_peft_model(model, config)
        except (ValueError, TypeError) as err:  # peft's message for shapes/options that do not fit
            raise UserError(f"{self.name} cannot be applied with these settings: {str(err).splitlines()[0]}") from None

    def optimizer(self, model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
        """AdamW over the trainable weights, with Trainer's defaults (betas 0.9/0.999, eps 1e-8)."""
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    # --- training-time hooks --------------------------------------------------------------

    def after_step(self, model: torch.nn.Module, step: int) -> None:
        """Called after every optimizer step (before zero_grad) with the unwrapped model."""

    def state(self, model: torch.nn.Module) -> dict[str, Any] | None:
        """JSON-able state that must travel with the weights (checkpoints, the best epoch's snapshot)."""
        return None

    def load_state(self, model: torch.nn.Module, state: dict[str, Any] | None) -> None:
        """Put back what ``state`` returned, before the matching weights are used."""

    def checkpoint_tensors(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Extra tensors a checkpoint keeps for an exact resume (optimizer-like state outside the optimizer)."""
        return {}

    def load_checkpoint_tensors(self, model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what ``checkpoint_tensors`` saved (called even when there were none)."""

    # --- saving and loading ---------------------------------------------------------------

    def quiet(self) -> AbstractContextManager:
        """Hides peft's false alarms for this method while its adapters are saved or loaded."""
        return contextlib.nullcontext()

    def named_config(self, config: peft.PeftConfig, adapter_name: str) -> peft.PeftConfig:
        """The saved adapter config made ready to load under ``adapter_name`` beside other adapters."""
        return config

    def save(self, model: torch.nn.Module, out: Path) -> None:
        """Write the trained weights into a run directory (an adapter, or a whole model)."""
        with self.quiet():
            model.save_pretrained(out)


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}") from None
