"""Registry of fine-tuning methods: name -> peft config builder + ViT defaults.

Adding a peft method is one ``register(Method(...))`` call here; the CLI, training,
saving, merging and serving all look methods up by name.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import peft

from .errors import UserError

ATTN_QV = ("query", "value")


@dataclass(frozen=True)
class AdapterArgs:
    """Everything a builder needs, already resolved against the loaded model."""

    rank: int
    alpha: float
    dropout: float
    target_modules: list[str]
    head_modules: list[str]
    options: dict[str, Any]
    total_steps: int


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    build: Callable[[AdapterArgs], peft.PeftConfig] | None  # None: no adapter (full, linear)
    rank: int = 0
    alpha: float = 0.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ATTN_QV
    options: dict[str, Any] = field(default_factory=dict)
    mixed_batch: bool = False  # peft's adapter_names mixed-batch forward works (LoRA family only)

    @property
    def is_adapter(self) -> bool:
        return self.build is not None


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}") from None


def _lora(a: AdapterArgs, **extra: Any) -> peft.LoraConfig:
    return peft.LoraConfig(
        r=a.rank, lora_alpha=a.alpha, lora_dropout=a.dropout, bias="none",
        target_modules=a.target_modules, modules_to_save=a.head_modules, **{**a.options, **extra},
    )


def _loha(a: AdapterArgs) -> peft.LoHaConfig:
    return peft.LoHaConfig(r=a.rank, alpha=a.alpha, module_dropout=a.dropout,
                           target_modules=a.target_modules, modules_to_save=a.head_modules, **a.options)


def _lokr(a: AdapterArgs) -> peft.LoKrConfig:
    return peft.LoKrConfig(r=a.rank, alpha=a.alpha, module_dropout=a.dropout,
                           target_modules=a.target_modules, modules_to_save=a.head_modules, **a.options)


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
        f"using tinit={new_tinit}, tfinal={new_tfinal}", stacklevel=2,
    )
    return new_tinit, new_tfinal


def _adalora(a: AdapterArgs) -> peft.AdaLoraConfig:
    opts = dict(a.options)
    tinit, tfinal = fit_adalora_schedule(int(opts.pop("tinit", 200)), int(opts.pop("tfinal", 1000)), a.total_steps)
    # AdaLoraConfig ignores ``r``: the average rank budget is ``target_r``
    return peft.AdaLoraConfig(
        target_r=a.rank, lora_alpha=a.alpha, lora_dropout=a.dropout, target_modules=a.target_modules,
        modules_to_save=a.head_modules, total_step=a.total_steps, tinit=tinit, tfinal=tfinal,
        init_r=int(opts.pop("init_r", 12)), deltaT=int(opts.pop("deltaT", 10)), **opts,
    )


def _vera(a: AdapterArgs) -> peft.VeraConfig:
    return peft.VeraConfig(r=a.rank, vera_dropout=a.dropout, target_modules=a.target_modules,
                           modules_to_save=a.head_modules, **a.options)


def _oft(a: AdapterArgs) -> peft.OFTConfig:
    # peft wants either r (number of blocks) or oft_block_size; block size is the one that
    # does not depend on the layer width, so --rank means the block size here.
    return peft.OFTConfig(r=0, oft_block_size=a.rank, module_dropout=a.dropout,
                          target_modules=a.target_modules, modules_to_save=a.head_modules, **a.options)


def _boft(a: AdapterArgs) -> peft.BOFTConfig:
    # One butterfly factor: without its CUDA extension (every CPU, most GPU installs) peft builds
    # factor 1 whatever the config says, and an adapter saved with factor 2 would then not load
    # on a machine where the extension does build. 1 keeps saved configs and weights in agreement.
    opts = {"boft_n_butterfly_factor": 1, **a.options}
    return peft.BOFTConfig(boft_block_size=a.rank, boft_dropout=a.dropout, target_modules=a.target_modules,
                           modules_to_save=a.head_modules, **opts)


def _ia3(a: AdapterArgs) -> peft.IA3Config:
    feedforward = [t for t in a.target_modules if t in ("fc2", "output.dense")]
    return peft.IA3Config(target_modules=a.target_modules, feedforward_modules=feedforward,
                          modules_to_save=a.head_modules, **a.options)


register(Method("lora", "Low-rank update B@A on each target (Hu et al. 2021)", _lora,
                rank=16, alpha=16, dropout=0.1, mixed_batch=True))
register(Method("dora", "LoRA with a learned magnitude per output (weight-decomposed LoRA)",
                lambda a: _lora(a, use_dora=True), rank=16, alpha=16, dropout=0.1))
register(Method("loha", "Low-rank Hadamard product of two LoRA pairs", _loha, rank=16, alpha=16, dropout=0.1))
register(Method("lokr", "Low-rank Kronecker product", _lokr, rank=16, alpha=16, dropout=0.1))
register(Method("adalora", "LoRA with SVD-style rank budget reallocated during training", _adalora,
                rank=8, alpha=8, dropout=0.0, options={"init_r": 12, "tinit": 200, "tfinal": 1000, "deltaT": 10}))
register(Method("vera", "Shared frozen random projections, trained scaling vectors", _vera,
                rank=256, dropout=0.0))
register(Method("oft", "Orthogonal fine-tuning with block-diagonal rotations (--rank = block size)", _oft,
                rank=16, dropout=0.0))
register(Method("boft", "Butterfly orthogonal fine-tuning (--rank = block size)", _boft, rank=4, dropout=0.0))
register(Method("ia3", "Learned rescaling of keys, values and the MLP output", _ia3,
                target_modules=("key", "value", "fc2")))
register(Method("full", "Every weight trained (no adapter): the expensive baseline", None, target_modules=()))
register(Method("linear", "Backbone frozen, only the classifier head trained (linear probe)", None,
                target_modules=()))
