"""Each adapter's own classifier head on the shared base model.

peft keeps a per-adapter copy of the head (``ModulesToSaveWrapper.modules_to_save[name]``), but it makes
that copy from the base model's head, so an adapter trained with another number of classes would not load
into it: ``fit_heads`` rebuilds such a copy with the adapter's shape and fills it from its own weights.

peft's mixed-batch forward (``adapter_names``) runs every adapter's head copy on its own rows and stacks
the results, which fails when the adapters' class counts differ. ``SharedHead`` splits the pass where the
widths part: the backbone runs once for the whole batch (with ``adapter_names``, so each row gets its own
adapter's layers), the head is swapped for a pass-through that hands back its input features, and then
each adapter's head runs on its own rows. peft has no such "features, then per-adapter heads" forward,
hence this module.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from peft.utils.other import ModulesToSaveWrapper
from safetensors import safe_open

from imgtune.errors import UserError


def head_wrappers(model: torch.nn.Module, adapter: str | None = None) -> dict[str, ModulesToSaveWrapper]:
    """module name -> peft's head wrapper (those holding a copy for ``adapter``, when one is named)."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, ModulesToSaveWrapper) and (adapter is None or adapter in module.modules_to_save)
    }


def fit_heads(
    model: torch.nn.Module, adapter: str, saved: dict[str, torch.Tensor], load_error: Callable[[str], UserError]
) -> None:
    """Rebuild the Linear layers of this adapter's head copies whose shape differs from the saved weights,
    then load them. A copy is usually one Linear (imgtune saves head Linear layers); a peft adapter saved
    with a whole head block (ResNet's Flatten + Linear) has its Linear layers rebuilt inside the block.
    ``load_error(reason)`` makes the error for a head that belongs to another base."""
    for module_name, module in head_wrappers(model, adapter).items():
        prefix = f"{module_name}."
        own = {k[len(prefix) :]: v for k, v in saved.items() if k.startswith(prefix)}
        copy = module.modules_to_save[adapter]
        state = copy.state_dict()
        wrong = [k for k, v in own.items() if k not in state or state[k].shape != v.shape]
        linears = {n: m for n, m in copy.named_modules() if isinstance(m, torch.nn.Linear)}
        split = {k: k.rpartition(".") for k in own}  # "1.weight" -> owner "1", tensor "weight"
        layers = {o: {split[k][2]: v for k, v in own.items() if split[k][0] == o} for o in linears}
        owners = {split[k][0] for k in wrong}
        if not all(o in linears and "weight" in layers[o] for o in owners):
            raise UserError(
                f"adapter {adapter!r} has a head of another size and {module_name} is not made of "
                "Linear layers: serve it on its own"
            )
        for owner in owners:
            old, layer = linears[owner], layers[owner]
            rows, cols = layer["weight"].shape
            if cols != old.in_features:  # another class count changes rows only; other features, another base
                raise load_error(f"its {module_name} takes {cols} features, this base gives {old.in_features}")
            new = torch.nn.Linear(cols, rows, bias="bias" in layer, dtype=old.weight.dtype, device=old.weight.device)
            new.load_state_dict(layer)
            new.requires_grad_(False)
            if owner:
                copy.set_submodule(owner, new)
            else:
                module.modules_to_save[adapter] = new


class SharedHead:
    """The model's one head wrapper, when its output is the model's logits: then adapters of any class
    count share one backbone pass. ``of(model)`` is None for a model with several head wrappers (a head
    block saved module by module, a distilled model with two heads): their batches split by class count."""

    def __init__(self, name: str, wrapper: ModulesToSaveWrapper):
        self.name, self.wrapper = name, wrapper

    @classmethod
    def of(cls, model: torch.nn.Module) -> SharedHead | None:
        wrappers = head_wrappers(model)
        if len(wrappers) != 1 or not isinstance(next(iter(wrappers.values())).original_module, torch.nn.Linear):
            return None
        (name, wrapper), *_ = wrappers.items()
        return cls(name, wrapper)

    @contextmanager
    def features(self, model: torch.nn.Module):
        """Within the block the model's "logits" are the head's input features; the head is put back
        however the block ends, so a failing forward leaves the model as it was."""
        model.set_submodule(self.name, torch.nn.Identity())
        try:
            yield
        finally:
            model.set_submodule(self.name, self.wrapper)

    @property
    def in_features(self) -> int:
        return self.wrapper.original_module.in_features

    def logits(
        self, features: torch.Tensor, names: list[str], probes: dict[str, torch.nn.Module] | None = None
    ) -> list[torch.Tensor]:
        """One logits row per image, each from its own adapter's head (rows of different widths);
        ``probes``: the heads of linear probes, which peft does not hold."""
        rows: list[torch.Tensor | None] = [None] * len(names)
        heads, probes = self.wrapper.modules_to_save, probes or {}
        for name in dict.fromkeys(names):
            idx = [i for i, n in enumerate(names) if n == name]
            if name in probes:
                head = probes[name]
            else:
                head = heads[name] if name in heads else self.wrapper.original_module
            for i, row in zip(idx, head(features[idx])):
                rows[i] = row
        return rows


# the backbone tensors compared with the base's before a linear probe's head is served on it
BACKBONE_SAMPLES = 3


def probe_files(run: Path) -> dict[str, Path]:
    """tensor name -> the safetensors file that holds it, for a whole model saved in one file or sharded."""
    index = run / "model.safetensors.index.json"
    if index.is_file():
        return {k: run / f for k, f in json.loads(index.read_text())["weight_map"].items()}
    with safe_open(run / "model.safetensors", framework="pt") as f:
        return dict.fromkeys(f.keys(), run / "model.safetensors")


def read_tensor(files: dict[str, Path], key: str) -> torch.Tensor:
    with safe_open(files[key], framework="pt") as f:
        return f.get_tensor(key)


def read_probe_head(run: Path, head: str, base_state: dict[str, torch.Tensor], in_features: int) -> torch.nn.Linear:
    """A linear probe's head as a Linear, after checking that its backbone is the base's: a few backbone
    tensors, first, middle and last, must be the base's own (a probe trains the head only). Reads only
    those tensors and the head's, whatever the size of the saved model. ``head``: the head's module name
    in the plain model ("classifier"); ``base_state``: the served base's tensors, by the same names."""
    files = probe_files(run)
    shared = [k for k in files if k in base_state and not k.startswith(f"{head}.")]
    picks = sorted({shared[0], shared[len(shared) // 2], shared[-1]}) if shared else []
    changed = [k for k in picks if not torch.equal(read_tensor(files, k), base_state[k].detach().cpu())]
    if not picks or changed or f"{head}.weight" not in files:
        why = f"{changed[0]} differs" if changed else f"no {head}.weight and backbone tensors by this base's names"
        raise UserError(f"{run} is not a linear probe of this base ({why}): serve it on the base it was trained on")
    weight = read_tensor(files, f"{head}.weight")
    if weight.shape[1] != in_features:
        raise UserError(f"{run}: its {head} takes {weight.shape[1]} features, this base gives {in_features}")
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=f"{head}.bias" in files, dtype=weight.dtype)
    layer.weight.data.copy_(weight)
    if layer.bias is not None:
        layer.bias.data.copy_(read_tensor(files, f"{head}.bias"))
    return layer.requires_grad_(False).eval()
