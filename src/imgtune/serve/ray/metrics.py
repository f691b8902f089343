"""Per-replica metrics, two ways: through Ray Serve's metrics API (``ray.serve.metrics``: they appear in
Ray's Prometheus endpoint, tagged with application, deployment and replica) and on the app's own
``/metrics`` under imgtune's names, one series per replica (``replica`` label).

Each replica reports a snapshot of its pool and batcher every ``REPORT_INTERVAL`` seconds to the
``ImgtuneStats`` deployment (one replica, no CPU of its own); the ingress reads them from it for
``/metrics``, ``/healthz`` and ``/v1/adapters``. A replica that stopped reporting (killed, scaled down)
is dropped after ``STALE_AFTER`` seconds.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from ray import serve
from ray.serve import metrics as ray_metrics

from imgtune.serve.metrics import BATCH_SIZES, POOL_COUNTERS, SECONDS

REPORT_INTERVAL = 1.0
STALE_AFTER = 10.0


def snapshot(model, batcher, ready: bool) -> dict:
    """One replica's state as plain values (what it reports)."""
    pool = model.pool
    values = {key: float(getattr(pool, key, 0) or 0) for key in POOL_COUNTERS}
    lookups = values["hits"] + values["misses"]
    return {
        **values,
        "resident": list(pool.resident),
        "load_counts": dict(pool.load_counts),
        "errors": {name: error for name, error in list(pool.last_error.items()) if error},
        "known": len(model.adapters),
        "hit_ratio": values["hits"] / lookups if lookups else 1.0,
        "queue_depth": batcher.queue.qsize(),
        "batches": batcher.batches,
        "images": batcher.items,
        "ready": ready,
    }


class ReplicaMetrics:
    """The pool's counters and the batch sizes through Ray's metrics API, under imgtune's names (Ray adds its
    ``ray_`` prefix and the application, deployment and replica tags). Counters get the increase since the
    last update."""

    def __init__(self):
        text = dict(POOL_COUNTERS)
        self.counters = {
            key: ray_metrics.Counter(f"imgtune_adapter_{key}", description=text[key])
            for key in ("loads", "evictions", "hits", "misses")
        }
        self.resident = ray_metrics.Gauge("imgtune_resident_adapters", description="adapters loaded on the base model")
        self.hit_ratio = ray_metrics.Gauge(
            "imgtune_adapter_hit_ratio", description="hits / (hits + misses); 1 before any lookup"
        )
        self.load_latency = ray_metrics.Histogram(
            "imgtune_adapter_load_seconds",
            description="time to make an adapter resident when Ray's multiplexer asked for it",
            boundaries=list(SECONDS),
        )
        self.batch_size = ray_metrics.Histogram(
            "imgtune_batch_size", description="images per model call", boundaries=list(BATCH_SIZES)
        )
        self.queue_wait = ray_metrics.Histogram(
            "imgtune_queue_wait_seconds", description="time a request waited for its batch", boundaries=list(SECONDS)
        )
        self.last = {key: 0.0 for key in self.counters}

    def batch_started(self, waits: list[float]) -> None:
        """The batcher observer's metrics half (imgtune.serve.health.BatchObserver)."""
        self.batch_size.observe(len(waits))
        for wait in waits:
            self.queue_wait.observe(wait)

    def update(self, state: dict) -> None:
        for key, counter in self.counters.items():
            grown = state[key] - self.last[key]
            if grown > 0:
                counter.inc(grown)
            self.last[key] = state[key]
        self.resident.set(len(state["resident"]))
        self.hit_ratio.set(state["hit_ratio"])


@serve.deployment(
    name="ImgtuneStats",
    num_replicas=1,
    ray_actor_options={"num_cpus": 0},
    logging_config={"enable_access_log": False},  # a report a second from every replica is no news
)
class ImgtuneStats:
    """The replicas' last reports: replica id -> (time received, snapshot)."""

    def __init__(self):
        self.reports: dict[str, tuple[float, dict]] = {}

    def report(self, replica: str, state: dict) -> None:
        self.reports[replica] = (time.monotonic(), state)

    def snapshot(self) -> dict[str, dict]:
        now = time.monotonic()
        self.reports = {r: (t, s) for r, (t, s) in self.reports.items() if now - t <= STALE_AFTER}
        return {replica: state for replica, (_, state) in sorted(self.reports.items())}


class IngressMetrics:
    """The request counters of imgtune's single-process server (``imgtune.serve.metrics.ServeMetrics``),
    kept by the ingress so that ``imgtune.serve.metrics.AccessLog`` records into them unchanged."""

    def __init__(self):
        self.registry = registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "imgtune_requests", "classify requests by adapter and HTTP status", ["adapter", "status"], registry=registry
        )
        self.latency = Histogram(
            "imgtune_request_seconds", "classify latency, upload to answer", ["adapter"], buckets=SECONDS,
            registry=registry,
        )  # fmt: skip

    def exposition(self, replicas: dict[str, dict]) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ReplicaCollector(replicas))
        return generate_latest(self.registry) + generate_latest(registry)


class ReplicaCollector:
    """imgtune's pool and queue metrics, one series per replica."""

    def __init__(self, replicas: dict[str, dict]):
        self.replicas = replicas

    def collect(self):
        gauges = {
            "imgtune_replicas": ("replicas that reported lately", lambda s: 1),
            "imgtune_queue_depth": ("requests waiting for a batch", lambda s: s["queue_depth"]),
            "imgtune_resident_adapters": ("adapters loaded on the base model", lambda s: len(s["resident"])),
            "imgtune_known_adapters": ("adapters the replica can answer for", lambda s: s["known"]),
            "imgtune_adapter_hit_ratio": ("hits / (hits + misses); 1 before any lookup", lambda s: s["hit_ratio"]),
        }
        counters = {f"imgtune_adapter_{key}": (text, lambda s, key=key: s[key]) for key, text in POOL_COUNTERS.items()}
        for kind, table in ((GaugeMetricFamily, gauges), (CounterMetricFamily, counters)):
            for name, (text, value) in table.items():
                metric = kind(name, text, labels=["replica"])
                for replica, state in self.replicas.items():
                    metric.add_metric([replica], value(state))
                yield metric
