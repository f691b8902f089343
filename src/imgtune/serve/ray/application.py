"""Building the Ray Serve application, and running it in the foreground for ``imgtune serve --ray``.

The application is three deployments bound together: ``ImgtuneIngress`` (HTTP, the route prefix's
ingress) holding handles to ``ImgtuneReplica`` (the engines) and ``ImgtuneStats`` (their reports).
Settings are checked and the adapter catalog is read here, where the app is built, so a wrong path is
one error line rather than a replica that fails to start on some node.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from imgtune.errors import UserError
from imgtune.serve.ray.ingress import ImgtuneIngress
from imgtune.serve.ray.metrics import ImgtuneStats
from imgtune.serve.ray.replica import ImgtuneReplica
from imgtune.serve.ray.settings import APP_NAME, Scaling, Settings, from_args, parse_replicas

log = logging.getLogger(__name__)
SCALING = ("max_replicas", "max_ongoing", "log_level")
SHUTDOWN_WAIT = 30  # seconds


def ray_app(
    base: str,
    adapter_dir: str | Path | None = None,
    *,
    adapters: dict[str, str | Path] | None = None,
    max_resident: int | None = None,
    replicas: int | str = 1,
    replica_cpus: float = 1.0,
    replica_gpus: float = 0.0,
    **options: Any,
) -> Application:
    """imgtune's HTTP API as a Ray Serve application: ``serve.run(ray_app(...), route_prefix="/")``.

    Args:
        base: the base model (hub id or directory), readable on every node.
        adapter_dir: a folder of adapter runs (each served under its folder's name), on storage every
            node mounts at the same path.
        adapters: more adapters, ``{name: run directory}``.
        max_resident: adapters one replica holds at once (Ray's ``max_num_models_per_replica``).
        replicas: replica count, or ``"MIN:MAX"`` to autoscale between the two.
        replica_cpus: CPUs Ray reserves for each replica.
        replica_gpus: GPUs for each replica (``1``: one GPU each; a fraction shares one).
        **options: ``max_replicas``, ``max_ongoing`` (requests a replica takes at once), ``log_level`` (of
            the replicas and the ingress, ``imgtune serve --log-level``'s names), and the other
            fields of ``imgtune.serve.ray.settings.Settings``: ``device``, ``precision``, ``max_batch``,
            ``max_wait_ms``, ``preload``, ``max_bytes``, ``max_pixels``, ``request_limits``,
            ``route_by_adapter`` (False: Ray's routing without the adapter, for comparison).
    """
    count, most = parse_replicas(replicas)
    scaling = {k: options.pop(k) for k in SCALING if k in options}
    scaling.setdefault("max_replicas", most)
    settings = Settings(
        base=str(base),
        adapters=tuple((name, str(path)) for name, path in (adapters or {}).items()),
        adapter_dirs=(str(adapter_dir),) if adapter_dir is not None else (),
        max_resident=max_resident,
        **{k: tuple(v) if k == "preload" else v for k, v in options.items()},
    )
    return build(settings, Scaling(count, replica_cpus=replica_cpus, replica_gpus=replica_gpus, **scaling))


def ray_app_builder(args: dict) -> Application:
    """For ``serve run imgtune.serve:ray_app_builder base=... adapter_dir=...`` and Serve config files
    (``import_path: imgtune.serve:ray_app_builder`` with ``args``); see ``settings.from_args``."""
    if "base" not in args:
        raise UserError("ray_app_builder needs base=MODEL")
    return build(*from_args(args))


def build(settings: Settings, scaling: Scaling) -> Application:
    settings.check()
    scaling.check()
    catalog = settings.catalog()  # here, not in a replica on some node: a wrong path is one line
    unknown = [name for name in settings.preload if name not in catalog.adapters]
    if unknown:
        raise UserError(f"--preload {', '.join(unknown)}: no such adapter (known: {', '.join(catalog.adapters)})")
    stats = ImgtuneStats.bind()
    replica = ImgtuneReplica.options(**scaling.replica_options(settings)).bind(settings, stats)
    return ImgtuneIngress.options(**scaling.logging_options()).bind(replica, stats, settings)


def run_foreground(app: Application, address: str | None, host: str, port: int, announce, **ray_init) -> None:
    """Deploy ``app`` on the cluster at ``address`` (None: start a local one; ``ray_init``: more arguments
    for ``ray.init``, such as ``num_cpus``), serve until SIGINT or SIGTERM, then delete the app (and stop
    the local cluster this started)."""
    import ray

    local = address is None
    ray.init(address=address, namespace="imgtune", **ray_init)
    stop = threading.Event()
    handlers = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve.start(http_options={"host": host, "port": port})
        try:
            serve.run(app, name=APP_NAME, route_prefix="/")
        except RuntimeError as err:
            raise UserError(f"the Ray Serve app did not start: {first_line(err)} (the Ray logs say more)") from None
        announce()
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        shut_down(local)


def shut_down(local: bool) -> None:
    """Delete the app (and stop Serve on a cluster this started), waiting SHUTDOWN_WAIT seconds at most:
    a cluster that lost its head must not keep the command from ending."""

    def delete() -> None:
        try:
            serve.delete(APP_NAME)
            if local:
                serve.shutdown()
        except Exception as err:  # noqa: BLE001 - shutting down: say so, then let Ray go
            log.warning("could not delete the Ray Serve app: %s", err)

    worker = threading.Thread(target=delete, name="imgtune-ray-shutdown", daemon=True)
    worker.start()
    worker.join(SHUTDOWN_WAIT)
    if worker.is_alive():
        log.warning("the Ray Serve app was not deleted within %d s; leaving it to Ray", SHUTDOWN_WAIT)
    import ray

    ray.shutdown()


def first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    errors = [line for line in lines if "Error:" in line]  # the constructor's own error, under Ray's traceback
    return (errors[-1] if errors else lines[0] if lines else type(err).__name__)[:300]
