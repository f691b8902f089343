"""One base model in memory, many adapters on it, each with its own label set and classifier head.

peft keeps a per-adapter copy of the head (``ModulesToSaveWrapper.modules_to_save[name]``), but it makes
that copy from the base model's head, so an adapter trained with a different number of classes would
not load into it. For such an adapter the copy's Linear is rebuilt with the adapter's shape and filled
from the adapter's own weights (peft is told to skip just those mismatched tensors).
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import peft
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoImageProcessor

from imgtune.data.decode import MAX_PIXELS, decode_rgb
from imgtune.data.samples import hwc_tensor, stack_images
from imgtune.data.transforms import BatchNormalizer, ImageSpec, eval_transform
from imgtune.errors import UserError
from imgtune.inference.precision import inference_autocast, resolve_device, resolve_precision
from imgtune.inference.predict import top_k
from imgtune.preflight import check_model_files, looks_like_path
from imgtune.rundir import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    check_complete,
    check_head_size,
    labels_of,
    method_of,
    read_json_config,
)
from imgtune.tuning.methods import Method
from imgtune.tuning.pretrained import load_base_model

log = logging.getLogger(__name__)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # no dots: peft uses names as ModuleDict keys


@dataclass
class Adapter:
    name: str
    path: Path
    labels: list[str]
    method: str
    mixed_batch: bool
    spec: ImageSpec
    trained_on: str | None = None  # the base recorded in adapter_config.json
    handler: Method | None = None  # the registry's method: how its adapters load quietly

    def describe(self) -> dict:
        return {
            "name": self.name,
            "method": self.method,
            "num_labels": len(self.labels),
            "labels": self.labels,
            "image_size": self.spec.size,
            "mixed_batch": self.mixed_batch,
        }


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise UserError(f"adapter name {name!r} must match {NAME_PATTERN.pattern}")
    return name


def read_adapter(name: str, path: str | Path) -> Adapter:
    out = Path(path).expanduser()
    if not (out / ADAPTER_CONFIG).is_file() or not (out / "config.json").is_file():
        raise UserError(f"{out} is not an imgtune adapter run (needs adapter_config.json and config.json)")
    check_complete(out)
    labels = labels_of(read_json_config(out, "config.json", AutoConfig.from_pretrained))
    check_head_size(out, len(labels))
    peft_config = read_json_config(out, ADAPTER_CONFIG, peft.PeftConfig.from_pretrained)
    method = method_of(out)
    spec = ImageSpec.from_processor(AutoImageProcessor.from_pretrained(out))
    return Adapter(
        check_name(name),
        out,
        labels,
        method.name,
        # from the adapter's own config, not its method's name: a LoRA run with use_dora cannot mix
        method.mixed_batch and not getattr(peft_config, "use_dora", False),
        spec,
        peft_config.base_model_name_or_path,
        method,
    )


def same_model(a: str, b: str) -> bool:
    """Local directories compare as resolved paths (a run records an absolute one), hub ids as strings."""

    def key(name: str) -> str:
        path = Path(name).expanduser()
        return str(path.resolve()) if path.is_dir() else name

    return key(a) == key(b)


def error_gist(err: BaseException, limit: int = 300) -> str:
    """One short line from a load error: torch's state-dict errors put a heading line, then one line per
    mismatched tensor (dozens for another architecture), so keep the first tensor line and count the rest."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    if len(lines) > 1 and lines[0].endswith(":"):  # "Error(s) in loading state_dict for PeftModel:"
        lines = lines[1:]
    gist = lines[0].rstrip(".")
    gist = gist if len(gist) <= limit else gist[: limit - 3] + "..."
    return gist + (f" (and {len(lines) - 1} more)" if len(lines) > 1 else "")


def head_tensors(path: Path, prefixes: list[str]) -> dict[str, torch.Tensor]:
    """The saved tensors under ``prefixes`` (the head copies) only: peft has already read the rest."""
    with safe_open(str(path / ADAPTER_WEIGHTS), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith(tuple(prefixes))}


class MultiAdapterModel:
    """A PeftModel holding every adapter; ``lock`` serialises forwards with adapter loads/deletes."""

    def __init__(
        self, base: str, adapters: list[tuple[str, str | Path]], device: str | None = None, precision: str = "auto"
    ):
        if not adapters:
            raise UserError("give at least one --adapter NAME=OUTPUT_DIR")
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device.type)
        self.lock = threading.Lock()
        self.adapters: dict[str, Adapter] = {}
        names = [check_name(n) for n, _ in adapters]
        if len(set(names)) != len(names):
            raise UserError(f"adapter names must be unique: {', '.join(names)}")
        first = read_adapter(*adapters[0])
        types = {
            read_json_config(Path(p).expanduser(), ADAPTER_CONFIG, peft.PeftConfig.from_pretrained).peft_type
            for _, p in adapters
        }
        # A PeftModel holds one peft type only; adapters of several types (LoRA + LoHa + ...) need peft's
        # PeftMixedModel, which has no adapter_names mixed-batch forward: batches are grouped by adapter then.
        self.mixed_types = len(types) > 1
        if self.mixed_types:
            from peft.tuners.mixed import COMPATIBLE_TUNER_TYPES

            bad = sorted(t.value for t in types if t not in COMPATIBLE_TUNER_TYPES)
            if bad:
                raise UserError(
                    f"peft cannot hold {', '.join(bad)} adapters beside other adapter types on one base: "
                    f"serve them in their own server (mixable: {', '.join(t.value for t in COMPATIBLE_TUNER_TYPES)})"
                )
        cls = peft.PeftMixedModel if self.mixed_types else peft.PeftModel
        self.base = base
        if looks_like_path(base):
            check_model_files(base)  # pickled weights are refused in one line, as everywhere
        base_model = load_base_model(base, first.labels)
        try:
            with first.handler.quiet():
                self.model = cls.from_pretrained(base_model, first.path, adapter_name=first.name)
        except (RuntimeError, ValueError, KeyError) as err:
            raise self._load_error(first, error_gist(err)) from None
        self.model.to(self.device).eval()
        self._warn_other_base(first)
        self.adapters[first.name] = first
        self.normalizers = {first.spec: BatchNormalizer(first.spec).to(self.device)}
        for name, path in adapters[1:]:
            self.add(name, path)

    # --- adapters --------------------------------------------------------------------

    def add(self, name: str, path: str | Path) -> Adapter:
        adapter = read_adapter(name, path)
        with self.lock:
            if name in self.adapters:
                raise UserError(f"adapter {name!r} is already loaded")
            try:
                skipped = self._load_adapter(adapter)
            except (RuntimeError, ValueError, KeyError) as err:
                raise self._load_error(adapter, error_gist(err)) from None
            try:
                # only head copies may differ in shape (another class count); any other skipped tensor means
                # the adapter was trained on another architecture and would serve with untrained weights
                foreign = [k for k in skipped if ".modules_to_save." not in k]
                if foreign:
                    more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
                    raise self._load_error(adapter, f"size mismatch for {foreign[0]}{more}")
                self._fit_heads(adapter)
            except UserError:
                self.model.delete_adapter(name)
                raise
            self.model.to(self.device).eval()
            self.adapters[name] = adapter
            self.normalizers.setdefault(adapter.spec, BatchNormalizer(adapter.spec).to(self.device))
        self._warn_other_base(adapter)
        return adapter

    def _load_adapter(self, adapter: Adapter) -> list[str]:
        """load_adapter, skipping tensors whose shape differs from this model's; returns their names."""
        with warnings.catch_warnings(record=True) as caught, adapter.handler.quiet():
            # peft names the skipped tensors only in this warning; it is read here, not shown
            warnings.filterwarnings("always", message=".*ignore_mismatched_sizes.*")
            self.model.load_adapter(str(adapter.path), adapter_name=adapter.name, ignore_mismatched_sizes=True)
        skipped = []
        for caught_warning in caught:
            text = str(caught_warning.message)
            if "ignore_mismatched_sizes" in text:
                skipped += re.findall(r"- (\S+): found shape", text)
            else:  # everything else is shown as it would have been
                warnings.warn_explicit(
                    caught_warning.message, caught_warning.category, caught_warning.filename, caught_warning.lineno
                )
        return skipped

    def _load_error(self, adapter: Adapter, reason: str) -> UserError:
        hint = (
            f"serve it on the base it was trained on ({adapter.trained_on})"
            if adapter.trained_on
            else "serve it on the base it was trained on"
        )
        return UserError(f"cannot load {adapter.path} onto base {self.base}: {reason}; {hint}")

    def _warn_other_base(self, adapter: Adapter) -> None:
        # only a warning: a copied or re-downloaded base directory is the same model under another name
        if adapter.trained_on and not same_model(adapter.trained_on, self.base):
            log.warning("adapter %r was trained on %s, serving it on %s", adapter.name, adapter.trained_on, self.base)

    def _fit_heads(self, adapter: Adapter) -> None:
        """Rebuild the Linear layers of this adapter's head copies whose shape differs from the saved weights,
        then load them. A copy is usually one Linear (imgtune saves head Linear layers); a peft adapter saved
        with a whole head block (ResNet's Flatten + Linear) has its Linear layers rebuilt inside the block."""
        wrappers = {
            f"{name}.": module
            for name, module in self.model.named_modules()
            if isinstance(module, peft.utils.other.ModulesToSaveWrapper) and adapter.name in module.modules_to_save
        }
        weights = head_tensors(adapter.path, list(wrappers))
        for prefix, module in wrappers.items():
            module_name = prefix[:-1]
            own = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
            copy = module.modules_to_save[adapter.name]
            state = copy.state_dict()
            wrong = [k for k, v in own.items() if k not in state or state[k].shape != v.shape]
            linears = {n: m for n, m in copy.named_modules() if isinstance(m, torch.nn.Linear)}
            split = {k: k.rpartition(".") for k in own}  # "1.weight" -> owner "1", tensor "weight"
            layers = {o: {split[k][2]: v for k, v in own.items() if split[k][0] == o} for o in linears}
            owners = {split[k][0] for k in wrong}
            if not all(o in linears and "weight" in layers[o] for o in owners):
                raise UserError(
                    f"adapter {adapter.name!r} has a head of another size and {module_name} is not made of "
                    "Linear layers: serve it on its own"
                )
            for owner in owners:
                old, layer = linears[owner], layers[owner]
                rows, cols = layer["weight"].shape
                if cols != old.in_features:  # another class count changes rows only; other features, another base
                    raise self._load_error(
                        adapter, f"its {module_name} takes {cols} features, this base gives {old.in_features}"
                    )
                kind = {"dtype": old.weight.dtype, "device": old.weight.device}
                new = torch.nn.Linear(cols, rows, bias="bias" in layer, **kind)
                new.load_state_dict(layer)
                new.requires_grad_(False)
                if owner:
                    copy.set_submodule(owner, new)
                else:
                    module.modules_to_save[adapter.name] = new

    def remove(self, name: str) -> None:
        with self.lock:
            if name not in self.adapters:
                raise KeyError(name)
            if len(self.adapters) == 1:
                raise UserError("cannot remove the last adapter")
            if name == self.model.active_adapter:
                self.model.set_adapter(next(n for n in self.adapters if n != name))
            self.model.delete_adapter(name)
            del self.adapters[name]

    # --- inference -------------------------------------------------------------------

    def preprocess(self, name: str, data: bytes, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
        """Image bytes -> uint8 CHW at the adapter's size, as Predictor's data loader does it."""
        spec = self.adapters[name].spec
        return eval_transform(spec)(hwc_tensor(decode_rgb(data, spec.size, max_pixels)))

    @torch.inference_mode()
    def probabilities(self, names: list[str], pixels: list[torch.Tensor]) -> list[torch.Tensor]:
        """One probability row per (adapter name, image): mixed-batch forward where every adapter in a
        group supports it and shares head width and input size, one forward per adapter otherwise."""
        groups: dict[tuple, list[int]] = {}
        for i, name in enumerate(names):
            a = self.adapters[name]
            mixable = a.mixed_batch and not self.mixed_types
            key = ("mixed", len(a.labels), a.spec) if mixable else ("single", name)
            groups.setdefault(key, []).append(i)
        rows: list[torch.Tensor | Exception | None] = [None] * len(names)
        with self.lock:
            for key, idx in groups.items():
                try:
                    probs = self.group_probabilities(key[0] == "mixed", [names[i] for i in idx],
                                                     [pixels[i] for i in idx])  # fmt: skip
                except Exception as err:  # noqa: BLE001 - only this group's requests get the error
                    probs = [err] * len(idx)
                for j, i in enumerate(idx):
                    rows[i] = probs[j]
        return rows

    def group_probabilities(self, mixed: bool, names: list[str], pixels: list[torch.Tensor]) -> torch.Tensor:
        spec = self.adapters[names[0]].spec
        batch = self.normalizers[spec](stack_images(pixels).to(self.device))
        with inference_autocast(self.precision, self.device.type):
            if mixed and len(set(names)) > 1:
                logits = self.forward_leaving_no_hooks(pixel_values=batch, adapter_names=names)
            else:
                # LoHa/LoKr/IA3/OFT/VeRA ignore adapter_names silently: switch the active adapter
                self.model.set_adapter(names[0])
                logits = self.forward_leaving_no_hooks(pixel_values=batch)
        return logits.float().softmax(dim=-1).cpu()

    def forward_leaving_no_hooks(self, **inputs) -> torch.Tensor:
        """The model's logits; if the forward raises, the pre-forward hooks it registered are removed.
        peft (0.21) registers its mixed-batch hooks on every layer and removes them only when the
        forward returns, so one failing batch would otherwise break every later request."""
        before = {id(m): set(m._forward_pre_hooks) for m in self.model.modules()}
        try:
            return self.model(**inputs).logits
        except Exception:
            for module in self.model.modules():
                for key in set(module._forward_pre_hooks) - before.get(id(module), set()):
                    module._forward_pre_hooks.pop(key, None)
                    module._forward_pre_hooks_with_kwargs.pop(key, None)
            raise

    def top_k(self, name: str, probs: torch.Tensor, k: int) -> list[dict]:
        return top_k(probs, self.adapters[name].labels, k)
