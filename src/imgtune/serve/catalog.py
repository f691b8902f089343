"""The adapter catalog: every adapter the server can answer for, as metadata only (name, path, labels,
method, image spec, whether it can share a mixed batch). Nothing here loads weights: a catalog of hundreds
of adapters costs a few config files each, and the resident pool decides which are on the model."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import peft
from transformers import AutoConfig, AutoImageProcessor

from imgtune.data.transforms import ImageSpec
from imgtune.errors import UserError
from imgtune.rundir import (
    ADAPTER_CONFIG,
    RUN_CONFIG,
    check_complete,
    check_head_size,
    labels_of,
    method_of,
    read_json_config,
    recorded_settings,
)
from imgtune.tuning.methods import Method

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
    peft_type: str | None = None  # None: a linear probe, its trained head on the base's own backbone

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
    # fullmatch: with match, "$" also accepts a name ending in a newline
    if not NAME_PATTERN.fullmatch(name):
        raise UserError(f"adapter name {name!r} must match {NAME_PATTERN.pattern}")
    return name


def is_adapter_run(path: Path) -> bool:
    """A peft adapter run, or a run whose imgtune.yaml may say it is a linear probe (read_adapter decides)."""
    has_config = path.is_dir() and (path / "config.json").is_file()
    return has_config and ((path / ADAPTER_CONFIG).is_file() or (path / RUN_CONFIG).is_file())


def is_head_only(adapter: Adapter) -> bool:
    return adapter.peft_type is None


def read_adapter(name: str, path: str | Path) -> Adapter:
    out = Path(path).expanduser()
    if not is_adapter_run(out):
        raise UserError(f"{out} is not an imgtune adapter run (needs adapter_config.json and config.json)")
    check_complete(out)
    labels = labels_of(read_json_config(out, "config.json", AutoConfig.from_pretrained))
    method = method_of(out)
    spec = ImageSpec.from_processor(AutoImageProcessor.from_pretrained(out))
    if not (out / ADAPTER_CONFIG).is_file():
        return read_linear_probe(check_name(name), out, labels, method, spec)
    check_head_size(out, len(labels))
    peft_config = read_json_config(out, ADAPTER_CONFIG, peft.PeftConfig.from_pretrained)
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
        str(peft_config.peft_type.value),
    )


def read_linear_probe(name: str, out: Path, labels: list[str], method: Method, spec: ImageSpec) -> Adapter:
    """A linear-probe run holds a whole model whose backbone is the base's own: served as its head alone,
    on the shared backbone pass (the engine checks the backbone when it loads the head)."""
    if method.name != "linear":
        raise UserError(
            f"{out} holds a whole model trained with {method.name} (no adapter): serve it with "
            "imgtune predict, or as the --base of its own server; adapters and linear probes share a base"
        )
    trained_on = recorded_settings(out).get("model")
    return Adapter(name, out, labels, method.name, True, spec, str(trained_on) if trained_on else None, method, None)


class Catalog:
    """name -> Adapter, from ``--adapter NAME=DIR`` and from the run folders directly under each ``--adapter-dir``."""

    def __init__(self, roots: list[str | Path] = ()):
        self.roots = [Path(r).expanduser() for r in roots]
        for root in self.roots:
            if not root.is_dir():
                raise UserError(f"--adapter-dir {root} is not a directory")
        self.adapters: dict[str, Adapter] = {}
        self._mutex = threading.Lock()  # a rescan and an admin add may race for one name

    def add(self, name: str, path: str | Path) -> Adapter:
        adapter = read_adapter(name, path)
        with self._mutex:
            if name in self.adapters:
                raise UserError(f"adapter {name!r} is already loaded")
            self.adapters[name] = adapter
        return adapter

    def remove(self, name: str) -> None:
        with self._mutex:
            del self.adapters[name]

    def scan(self) -> list[str]:
        """Add the adapter runs under the roots that the catalog does not hold yet; returns their names.
        A folder that is not a run is passed over quietly (a root may hold other things); a run with an
        unusable name or broken files is skipped with a warning, so one bad folder never stops the rest."""
        added = []
        for root in self.roots:
            for path in sorted(p for p in root.iterdir() if is_adapter_run(p)):
                name = path.name
                if name in self.adapters:
                    if self.adapters[name].path.resolve() != path.resolve():
                        log.warning("skipping %s: an adapter named %r is already served from elsewhere", path, name)
                    continue
                if not NAME_PATTERN.fullmatch(name):
                    log.warning("skipping %s: adapter folder names must match %s", path, NAME_PATTERN.pattern)
                    continue
                try:
                    self.add(name, path)
                except Exception as err:  # noqa: BLE001 - a damaged file raises its reader's own error types
                    log.warning("skipping %s: %s", path, str(err).splitlines()[0] if str(err) else type(err).__name__)
                    continue
                added.append(name)
        return added
