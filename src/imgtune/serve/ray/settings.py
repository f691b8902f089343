"""What the Ray deployments are built from: plain, picklable settings, checked where the app is built.

``Settings`` is what every replica needs to build its engine (the same arguments ``imgtune serve`` gives
``MultiAdapterModel`` and ``create_app``); ``Scaling`` is how Ray places and scales the replicas. A Serve
config file passes strings (``serve run imgtune.serve:ray_app_builder max_resident=4``): ``from_args``
turns them into both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imgtune.errors import UserError
from imgtune.serve.limits import MAX_BYTES, MAX_PIXELS, RequestLimits

APP_NAME = "imgtune"
LOG_LEVELS = {"critical": "CRITICAL", "error": "ERROR", "warning": "WARNING", "info": "INFO", "debug": "DEBUG",
              "trace": "DEBUG"}  # fmt: skip
REPLICA_HEADER = "X-Imgtune-Replica"


@dataclass(frozen=True)
class Settings:
    base: str
    adapters: tuple[tuple[str, str], ...] = ()  # (name, run directory)
    adapter_dirs: tuple[str, ...] = ()
    max_resident: int | None = None  # per replica: Ray's max_num_models_per_replica
    preload: tuple[str, ...] = ()
    device: str | None = None
    precision: str = "auto"
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_bytes: int = MAX_BYTES
    max_pixels: int = MAX_PIXELS
    request_limits: RequestLimits = RequestLimits()
    route_by_adapter: bool = True  # False: Ray's routing without the multiplexed id (a benchmark's baseline)

    def check(self) -> Settings:
        if self.max_resident is not None and self.max_resident < 1:
            raise UserError("max_resident must be at least 1")
        if self.max_batch < 1 or self.max_wait_ms < 0:
            raise UserError("max_batch must be >= 1 and max_wait_ms >= 0")
        if not self.adapters and not self.adapter_dirs:
            raise UserError("give at least one adapter (NAME, OUTPUT_DIR) or an adapter directory")
        for root in self.adapter_dirs:
            if not Path(root).expanduser().is_dir():
                raise UserError(f"--adapter-dir {root} is not a directory")
        return self

    def catalog(self):
        """The adapters these settings name, as metadata only (what the ingress checks requests against)."""
        from imgtune.serve.catalog import Catalog

        catalog = Catalog(list(self.adapter_dirs))
        for name, path in self.adapters:
            catalog.add(name, path)
        catalog.scan()
        if not catalog.adapters:
            raise UserError("no adapters: give --adapter NAME=OUTPUT_DIR, or an --adapter-dir that holds adapter runs")
        return catalog

    def build_model(self):
        """The replica's engine: its pool has no cap of its own, Ray's multiplex LRU is the cap (``sync``)."""
        from imgtune.serve.engine import MultiAdapterModel

        return MultiAdapterModel(
            self.base, list(self.adapters), self.device, self.precision, list(self.adapter_dirs),
            max_resident=None, preload=list(self.preload),
        )  # fmt: skip


@dataclass(frozen=True)
class Scaling:
    replicas: int = 1
    max_replicas: int | None = None  # given: autoscale between ``replicas`` and it
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    max_ongoing: int | None = None  # requests one replica takes at once; default: twice max_batch
    log_level: str | None = None  # the replicas' and the ingress's; access logs from "info"; None: Ray's default

    def check(self) -> Scaling:
        if self.replicas < 1 or (self.max_replicas is not None and self.max_replicas < self.replicas):
            raise UserError("replicas must be >= 1 (and max_replicas >= replicas)")
        if self.replica_cpus < 0 or self.replica_gpus < 0:
            raise UserError("replica_cpus and replica_gpus must be >= 0")
        if self.max_ongoing is not None and self.max_ongoing < 1:
            raise UserError("max_ongoing must be at least 1")
        if self.log_level is not None and self.log_level.lower() not in LOG_LEVELS:
            raise UserError(f"log level {self.log_level!r}: one of {', '.join(LOG_LEVELS)}")
        return self

    def logging_options(self) -> dict:
        """Ray Serve's logging_config from an ``imgtune serve --log-level`` (uvicorn's names)."""
        if self.log_level is None:
            return {}
        level = LOG_LEVELS[self.log_level.lower()]
        return {"logging_config": {"log_level": level, "enable_access_log": level in ("DEBUG", "INFO")}}

    def replica_options(self, settings: Settings) -> dict:
        """Ray Serve deployment options for ImgtuneReplica."""
        ongoing = self.max_ongoing or max(8, 2 * settings.max_batch)
        options = {
            "max_ongoing_requests": ongoing,
            "ray_actor_options": {"num_cpus": self.replica_cpus, "num_gpus": self.replica_gpus},
            **self.logging_options(),
        }
        if self.max_replicas is None:
            options["num_replicas"] = self.replicas
        else:
            options["autoscaling_config"] = {
                "min_replicas": self.replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": max(1, ongoing // 2),
            }
        return options


def parse_replicas(text) -> tuple[int, int | None]:
    """``N`` (a fixed count) or ``MIN:MAX`` (autoscaling bounds)."""
    low, sep, high = str(text).partition(":")
    try:
        return int(low), int(high) if sep else None
    except ValueError:
        raise UserError(f"replicas {text!r}: give N or MIN:MAX") from None


# how a Serve config's string values convert; a YAML file may give them typed already
INTS = ("max_resident", "max_batch", "max_bytes", "max_pixels", "max_replicas", "max_ongoing")
FLOATS = ("max_wait_ms", "replica_cpus", "replica_gpus")
LIMITS = {"max_decode_bytes": int, "max_aspect": float, "max_decodes": int, "max_queue": int,
          "read_timeout": float, "request_timeout": float}  # fmt: skip
STRINGS = ("base", "device", "precision", "log_level")


def from_args(args: dict) -> tuple[Settings, Scaling]:
    """A Serve config's ``args``: ``base``, ``adapter_dir`` (one) or ``adapter_dirs`` (a list or A,B),
    ``adapters`` ({name: dir} or NAME=DIR,...), ``replicas`` (N or MIN:MAX), ``preload`` (a list or A,B),
    ``route_by_adapter``, the numbers in INTS, FLOATS and LIMITS, and ``base``, ``device``, ``precision``."""
    args = dict(args)
    if "adapter_dir" in args:
        args["adapter_dirs"] = [args.pop("adapter_dir"), *listed(args.get("adapter_dirs", []))]
    known = {"adapters", "adapter_dirs", "preload", "replicas", "route_by_adapter", *INTS, *FLOATS, *LIMITS, *STRINGS}
    unknown = sorted(set(args) - known)
    if unknown:
        raise UserError(f"unknown ray_app argument(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    values = {k: number(k, v, int) for k, v in args.items() if k in INTS and v is not None}
    values |= {k: number(k, v, float) for k, v in args.items() if k in FLOATS}
    values |= {k: str(v) for k, v in args.items() if k in STRINGS}
    limits = RequestLimits(**{k: number(k, v, LIMITS[k]) for k, v in args.items() if k in LIMITS})
    if "replicas" in args:
        values["replicas"], most = parse_replicas(args["replicas"])
        values.setdefault("max_replicas", most)
    if "route_by_adapter" in args:
        values["route_by_adapter"] = str(args["route_by_adapter"]).lower() in ("true", "1", "yes")
    adapters = args.get("adapters", {})
    pairs = list(adapters.items()) if isinstance(adapters, dict) else [str(a).split("=", 1) for a in listed(adapters)]
    if any(len(pair) != 2 for pair in pairs):
        raise UserError(f"adapters={adapters!r}: give {{name: run directory}} or NAME=DIR,NAME=DIR")
    scaling = Scaling(**{k: values.pop(k) for k in ("replicas", "max_replicas", "replica_cpus", "replica_gpus",
                                                    "max_ongoing", "log_level") if k in values})  # fmt: skip
    return Settings(
        adapters=tuple((str(n), str(p)) for n, p in pairs),
        adapter_dirs=tuple(str(d) for d in listed(args.get("adapter_dirs", []))),
        preload=tuple(str(n) for n in listed(args.get("preload", []))),
        request_limits=limits,
        **values,
    ), scaling


def listed(value) -> list:
    """A list, or a comma-separated string of its items."""
    return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)


def number(key: str, value, kind):
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise UserError(f"{key}={value!r}: give a number") from None
