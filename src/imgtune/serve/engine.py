"""One base model in memory, many adapters on it, each with its own label set and classifier head
(``heads``: a head of another class count, and one backbone pass for adapters of different class counts).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import warnings
from pathlib import Path

import peft
import torch
from peft.utils import load_peft_weights, set_peft_model_state_dict
from torch.utils.hooks import RemovableHandle

from imgtune.data.decode import MAX_PIXELS, decode_rgb
from imgtune.data.samples import hwc_tensor, stack_images
from imgtune.data.transforms import BatchNormalizer, eval_transform
from imgtune.errors import UserError
from imgtune.inference.precision import inference_autocast, resolve_device, resolve_precision
from imgtune.inference.predict import top_k
from imgtune.preflight import check_model_files, looks_like_path
from imgtune.rundir import ADAPTER_CONFIG, ADAPTER_WEIGHTS, read_json_config
from imgtune.serve.catalog import NAME_PATTERN, Adapter, Catalog, check_name, is_head_only, read_adapter
from imgtune.serve.heads import SharedHead, fit_heads, read_probe_head
from imgtune.serve.pool import ResidentPool
from imgtune.tuning.pretrained import load_base_model

__all__ = ["NAME_PATTERN", "Adapter", "MultiAdapterModel", "check_name", "read_adapter"]

log = logging.getLogger(__name__)


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


class MultiAdapterModel:
    """A peft model on one base holding the resident adapters; ``lock`` serialises forwards with attaching
    and detaching adapters. Which adapters exist is the catalog's business (``adapters``), which are on the
    model the pool's (``pool``); a load reads the adapter's files before it takes the lock."""

    def __init__(
        self,
        base: str,
        adapters: list[tuple[str, str | Path]],
        device: str | None = None,
        precision: str = "auto",
        adapter_dirs: list[str | Path] = (),
        max_resident: int | None = None,
        preload: list[str] = (),
        max_resident_bytes: int | None = None,
    ):
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device.type)
        self.lock = threading.Lock()
        self.base = base
        self.catalog = Catalog(adapter_dirs)
        self.probe_heads: dict[str, torch.nn.Linear] = {}  # linear probes: a head each, no peft adapter
        start = self._fill_catalog(adapters, preload)
        self.mixed_types = self._check_types()
        self.pool = ResidentPool(self._load_from_disk, self._detach, max_resident, max_resident_bytes)
        self._build(self.adapters[start[0]])
        for name in start[1:]:  # named on the command line: a broken one stops the start, as it always did
            error = self.pool.ensure([name]).get(name)
            if error is not None:
                raise error

    @property
    def adapters(self) -> dict[str, Adapter]:
        return self.catalog.adapters

    def _fill_catalog(self, adapters: list[tuple[str, str | Path]], preload: list[str]) -> list[str]:
        """The catalog from --adapter and --adapter-dir; returns the adapters to load at start."""
        names = [check_name(n) for n, _ in adapters]
        if len(set(names)) != len(names):
            raise UserError(f"adapter names must be unique: {', '.join(names)}")
        for name, path in adapters:
            self.catalog.add(name, path)
        self.catalog.scan()
        if not self.adapters:
            raise UserError("give at least one --adapter NAME=OUTPUT_DIR, or an --adapter-dir that holds adapter runs")
        unknown = [n for n in preload if n not in self.adapters]
        if unknown:
            raise UserError(f"--preload {', '.join(unknown)}: no such adapter (known: {', '.join(self.adapters)})")
        # peft needs one adapter to make its model: the first named, else the first found; not a linear probe
        start = list(dict.fromkeys([*names, *preload])) or [next(iter(self.adapters))]
        first = next((n for n in [*start, *self.adapters] if not is_head_only(self.adapters[n])), None)
        if first is None:
            raise UserError(
                "linear probes are served on the backbone pass of adapter runs: give at least one adapter run "
                "(a linear probe alone is a whole model: imgtune predict, or serve it as --base)"
            )
        return list(dict.fromkeys([first, *start]))

    def _check_types(self) -> bool:
        # A PeftModel holds one peft type only; adapters of several types (LoRA + LoHa + ...) need peft's
        # PeftMixedModel, which has no adapter_names mixed-batch forward: batches are grouped by adapter then.
        types = {a.peft_type for a in self.adapters.values() if not is_head_only(a)}
        if len(types) <= 1:
            return False
        from peft.tuners.mixed import COMPATIBLE_TUNER_TYPES

        mixable = [t.value for t in COMPATIBLE_TUNER_TYPES]
        bad = sorted(t for t in types if t not in mixable)
        if bad:
            raise UserError(
                f"peft cannot hold {', '.join(bad)} adapters beside other adapter types on one base: "
                f"serve them in their own server (mixable: {', '.join(mixable)})"
            )
        return True

    def _build(self, first: Adapter) -> None:
        started = time.perf_counter()
        if looks_like_path(self.base):
            check_model_files(self.base)  # pickled weights are refused in one line, as everywhere
        base_model = load_base_model(self.base, first.labels)
        cls = peft.PeftMixedModel if self.mixed_types else peft.PeftModel
        try:
            with first.handler.quiet():
                config = self._peft_config(first)
                self.model = cls.from_pretrained(base_model, first.path, adapter_name=first.name, config=config)
        except (RuntimeError, ValueError, KeyError) as err:
            raise self._load_error(first, error_gist(err)) from None
        self.model.to(self.device).eval()
        self.shared_head = SharedHead.of(self.model)
        self.peft_type = first.peft_type
        self._warn_other_base(first)
        self.normalizers = {first.spec: BatchNormalizer(first.spec).to(self.device)}
        size = (first.path / ADAPTER_WEIGHTS).stat().st_size  # as read from disk: the tensors and a small header
        self.pool.mark_resident(first.name, time.perf_counter() - started, size)

    # --- adapters --------------------------------------------------------------------

    def add(self, name: str, path: str | Path) -> Adapter:
        """Catalog an adapter and load it now, so that a broken one is refused with its reason."""
        adapter = self.catalog.add(check_name(name), path)
        error = self.pool.ensure([name]).get(name)
        if error is not None:
            self.catalog.remove(name)
            self.pool.last_error.pop(name, None)
            raise error
        return adapter

    def rescan(self) -> list[str]:
        """Catalog the runs that appeared under the --adapter-dir folders; they load on first use."""
        return self.catalog.scan()

    def listing(self) -> list[dict]:
        return [{**a.describe(), **self.pool.state_of(a.name)} for a in list(self.adapters.values())]

    def _load_from_disk(self, name: str) -> int:
        """The pool's loader: read the files with no lock held, then attach under the lock; returns the
        bytes the adapter's tensors take (its share of a --max-resident-bytes budget).

        peft's ``load_adapter`` reads the files itself, so it is not used here; what it does after reading
        (``add_adapter`` + ``set_peft_model_state_dict``, peft 0.21) is done from the already-read state."""
        adapter = self.adapters[name]
        if is_head_only(adapter):
            return self._load_probe(adapter)
        if not self.mixed_types and adapter.peft_type != self.peft_type:
            raise UserError(
                f"adapter {name!r} is {adapter.peft_type} and this server was started with {self.peft_type} "
                "adapters only: peft holds several types on one base only when they are all there at start "
                "(restart with it among them)"
            )
        config = self._peft_config(adapter)
        try:
            weights = load_peft_weights(str(adapter.path), device="cpu")
        except Exception as err:  # noqa: BLE001 - safetensors' own error type: a damaged file is the adapter's fault
            raise self._load_error(adapter, error_gist(err)) from None
        with self.lock:
            self._attach(adapter, config, weights)
        self._warn_other_base(adapter)
        return sum(t.numel() * t.element_size() for t in weights.values())

    def _load_probe(self, adapter: Adapter) -> int:
        """A linear probe's head, read (with its backbone checked against this base) outside the lock."""
        if self.shared_head is None:
            raise UserError(f"{adapter.name!r} is a linear probe and this base's head is not one Linear layer")
        plain = self.model.base_model.model  # the transformers model, tensors by their saved names
        prefix = "base_model.model."
        head = read_probe_head(adapter.path, self.shared_head.name.removeprefix(prefix), plain.state_dict(),
                               self.shared_head.in_features)  # fmt: skip
        head.to(self.device)
        with self.lock:
            self.probe_heads[adapter.name] = head
        self._warn_other_base(adapter)
        return sum(t.numel() * t.element_size() for t in head.parameters())

    @staticmethod
    def _peft_config(adapter: Adapter) -> peft.PeftConfig:
        config = read_json_config(adapter.path, ADAPTER_CONFIG, peft.PeftConfig.from_pretrained)
        config.inference_mode = True
        return adapter.handler.named_config(config, adapter.name)

    def _attach(self, adapter: Adapter, config, weights: dict[str, torch.Tensor]) -> None:
        try:
            skipped = self._set_weights(adapter, config, weights)
            # only head copies may differ in shape (another class count); any other skipped tensor means
            # the adapter was trained on another architecture and would serve with untrained weights
            foreign = [k for k in skipped if ".modules_to_save." not in k]
            if foreign:
                more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
                raise self._load_error(adapter, f"size mismatch for {foreign[0]}{more}")
            fit_heads(self.model, adapter.name, weights, lambda reason: self._load_error(adapter, reason))
        except (RuntimeError, ValueError, KeyError, UserError) as err:
            if adapter.name in self.model.peft_config:
                self.model.delete_adapter(adapter.name)
            raise err if isinstance(err, UserError) else self._load_error(adapter, error_gist(err)) from None
        self.model.to(self.device).eval()
        self.shared_head = SharedHead.of(self.model)
        self.normalizers.setdefault(adapter.spec, BatchNormalizer(adapter.spec).to(self.device))

    def _set_weights(self, adapter: Adapter, config, weights: dict[str, torch.Tensor]) -> list[str]:
        """What load_adapter does once it has read the files, skipping tensors whose shape differs from
        this model's; returns their names."""
        with warnings.catch_warnings(record=True) as caught, adapter.handler.quiet():
            # peft names the skipped tensors only in this warning; it is read here, not shown
            warnings.filterwarnings("always", message=".*ignore_mismatched_sizes.*")
            self.model.add_adapter(adapter.name, config)
            set_peft_model_state_dict(self.model, weights, adapter_name=adapter.name, ignore_mismatched_sizes=True)
            if self.mixed_types:  # as PeftMixedModel.load_adapter does after loading
                self.model.set_adapter(self.model.active_adapters)
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

    def _detach(self, name: str) -> None:
        with self.lock:
            if self.probe_heads.pop(name, None) is not None or name not in self.model.peft_config:
                return
            others = [n for n in self.model.peft_config if n != name]
            if not others:  # the pool keeps one adapter on the model: peft cannot hold none
                raise UserError(f"cannot unload {name!r}: it is the only adapter on the model")
            if name == self.model.active_adapter:
                self.model.set_adapter(others[0])
            self.model.delete_adapter(name)
            self.shared_head = SharedHead.of(self.model)

    def remove(self, name: str) -> None:
        if name not in self.adapters:
            raise KeyError(name)
        if len(self.adapters) == 1:
            raise UserError("cannot remove the last adapter")
        if set(self.pool.resident) <= {name}:  # peft cannot hold no adapter: bring another one in first
            other = next(n for n in self.adapters if n != name)
            error = self.pool.ensure([other]).get(other)
            if error is not None:
                raise UserError(f"cannot remove {name!r}: no other adapter could take its place ({error})")
        self.catalog.remove(name)
        self.pool.forget(name)

    # --- inference -------------------------------------------------------------------

    def preprocess(self, name: str, data: bytes, max_pixels: int = MAX_PIXELS, **limits) -> torch.Tensor:
        """Image bytes -> uint8 CHW at the adapter's size, as Predictor's data loader does it.
        ``limits``: decode_rgb's other header checks (max_aspect, max_bytes)."""
        spec = self.adapters[name].spec
        return eval_transform(spec)(hwc_tensor(decode_rgb(data, spec.size, max_pixels, **limits)))

    @torch.inference_mode()
    def probabilities(self, names: list[str], pixels: list[torch.Tensor]) -> list[torch.Tensor | Exception]:
        """One probability row per (adapter name, image). Adapters that can mix share one backbone pass
        per input size, whatever their class counts; the others get one forward per adapter.
        The batch's adapters are pinned (never evicted while it runs) and made resident first, outside the
        lock; an adapter that cannot load (or was removed) fails its own rows only."""
        rows: list[torch.Tensor | Exception | None] = [None] * len(names)
        with self.pool.pinned(names):
            failed = self.pool.ensure(names, count=False)
            with self.lock:  # groups are decided under the lock: an attach may change what can share a pass
                for key, idx in self._groups(names, pixels, failed, rows).items():
                    try:
                        probs = self.group_probabilities(key[0], [names[i] for i in idx], [pixels[i] for i in idx])
                    except Exception as err:  # noqa: BLE001 - only this group's requests get the error
                        probs = [err] * len(idx)
                    for j, i in enumerate(idx):
                        rows[i] = probs[j]
        return rows

    def _groups(self, names: list[str], pixels: list[torch.Tensor], failed: dict, rows: list) -> dict[tuple, list[int]]:
        """Row indices by forward: ("mixed", input spec, head width or None when every head shares the
        pass) or ("single", adapter). Rows of adapters that failed to load get their error in ``rows``."""
        groups: dict[tuple, list[int]] = {}
        for i, name in enumerate(names):
            a = self.adapters.get(name)
            if name in failed or a is None:
                rows[i] = failed.get(name) or KeyError(name)
                continue
            # the pixels' own shape too: a request decoded for an adapter since replaced under its name
            # must not break the stacking of the others' rows
            shape = tuple(pixels[i].shape)
            if is_head_only(a):  # with LoRA rows as "__base__" where peft can route them, else adapters off
                key = ("mixed" if self.routes_rows else "base", a.spec, shape, None)
            elif a.mixed_batch and not self.mixed_types:
                key = ("mixed", a.spec, shape, None if self.shared_head else len(a.labels))
            else:
                key = ("single", name)
            groups.setdefault(key, []).append(i)
        return groups

    @property
    def routes_rows(self) -> bool:
        """Whether peft's adapter_names forward applies here (LoRA adapters only, in one PeftModel)."""
        return not self.mixed_types and self.peft_type == "LORA"

    def group_probabilities(self, kind: str, names: list[str], pixels: list[torch.Tensor]) -> list[torch.Tensor]:
        """``kind``: "mixed" (adapter_names), "single" (one adapter active) or "base" (adapters off: probes)."""
        spec = self.adapters[names[0]].spec
        batch = self.normalizers[spec](stack_images(pixels).to(self.device))
        shared = kind == "base" or (kind == "mixed" and (len(set(names)) > 1 or names[0] in self.probe_heads))
        with inference_autocast(self.precision, self.device.type):
            if shared and self.shared_head is not None:
                routes = ["__base__" if n in self.probe_heads else n for n in names]
                off = self.model.disable_adapter() if kind == "base" else contextlib.nullcontext()
                with off, self.shared_head.features(self.model):
                    inputs = {} if kind == "base" else {"adapter_names": routes}
                    features = self.forward_leaving_no_hooks(pixel_values=batch, **inputs)
                rows = self.shared_head.logits(features, names, self.probe_heads)
                return [row.float().softmax(dim=-1).cpu() for row in rows]
            if shared:
                logits = self.forward_leaving_no_hooks(pixel_values=batch, adapter_names=names)
            else:
                # LoHa/LoKr/IA3/OFT/VeRA ignore adapter_names silently: switch the active adapter (when it
                # is another: peft's set_adapter walks every module, 7 ms with 64 adapters resident)
                if list(self.model.active_adapters) != [names[0]]:
                    self.model.set_adapter(names[0])
                logits = self.forward_leaving_no_hooks(pixel_values=batch)
        return list(logits.float().softmax(dim=-1).cpu())

    def forward_leaving_no_hooks(self, **inputs) -> torch.Tensor:
        """The model's logits; if the forward raises, the pre-forward hooks it registered are removed.
        peft (0.21) registers its mixed-batch hooks on every layer and removes them only when the
        forward returns, so one failing batch would otherwise break every later request.

        torch numbers hook handles from one global counter, so the hooks added during this forward are
        those numbered from the counter's value before it: nothing is recorded on the way in (a snapshot
        of every module's hooks cost 2 ms a forward with 64 adapters resident)."""
        first_new = RemovableHandle.next_id
        try:
            return self.model(**inputs).logits
        except Exception:
            for module in self.model.modules():
                for key in [k for k in module._forward_pre_hooks if k >= first_new]:
                    module._forward_pre_hooks.pop(key, None)
                    module._forward_pre_hooks_with_kwargs.pop(key, None)
            raise

    def top_k(self, name: str, probs: torch.Tensor, k: int) -> list[dict]:
        return top_k(probs, self.adapters[name].labels, k)
