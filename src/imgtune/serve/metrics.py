"""What the server tells about itself: Prometheus metrics and the access log.

Every app has its own CollectorRegistry, never prometheus-client's global one, so several apps in one
process (tests, an embedding application) keep their own counts.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

access_log = logging.getLogger("imgtune.serve.access")
CONTENT_TYPE = CONTENT_TYPE_LATEST
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MEASURED_PATHS = ("/v1/classify",)
# the resident pool's counters, read with getattr: a model without a pool reports zeros
POOL_COUNTERS = {
    "loads": "adapters loaded onto the base model",
    "evictions": "adapters unloaded to keep under the resident cap",
    "hits": "requests whose adapter was already resident",
    "misses": "requests whose adapter had to be loaded first",
    "load_seconds": "seconds spent loading adapters",
}


class ServeMetrics:
    """The app's metrics; ``state`` is ``app.state`` (model, batcher and, if present, pool are read at scrape time)."""

    def __init__(self, state):
        self.registry = registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "imgtune_requests", "classify requests by adapter and HTTP status", ["adapter", "status"], registry=registry
        )
        self.latency = Histogram(
            "imgtune_request_seconds",
            "classify latency, upload to answer",
            ["adapter"],
            buckets=SECONDS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "imgtune_queue_wait_seconds", "time a request waited for its batch", buckets=SECONDS, registry=registry
        )
        self.batch_size = Histogram(
            "imgtune_batch_size", "images per model call", buckets=BATCH_SIZES, registry=registry
        )
        registry.register(StateCollector(state))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    # the batcher's observer
    def batch_started(self, waits: list[float]) -> None:
        self.batch_size.observe(len(waits))
        for wait in waits:
            self.queue_wait.observe(wait)


class StateCollector:
    """Gauges and pool counters read when scraped, so nothing has to keep them up to date."""

    def __init__(self, state):
        self.state = state

    def collect(self):
        model = self.state.model
        yield GaugeMetricFamily("imgtune_queue_depth", "requests waiting for a batch", self.state.batcher.queue.qsize())
        pool = getattr(model, "pool", None) or getattr(self.state, "pool", None) or model
        resident = getattr(pool, "resident", model.adapters)  # without a pool every adapter is loaded
        yield GaugeMetricFamily("imgtune_resident_adapters", "adapters loaded on the base model", len(resident))
        yield GaugeMetricFamily("imgtune_known_adapters", "adapters the server can answer for", len(model.adapters))
        values = {key: float(getattr(pool, key, 0) or 0) for key in POOL_COUNTERS}
        for key, text in POOL_COUNTERS.items():
            yield CounterMetricFamily(f"imgtune_adapter_{key}", text, values[key])
        lookups = values["hits"] + values["misses"]
        ratio = values["hits"] / lookups if lookups else 1.0
        yield GaugeMetricFamily("imgtune_adapter_hit_ratio", "hits / (hits + misses); 1 before any lookup", ratio)


def adapter_label(state, scope) -> str:
    """The adapter a request named, as a metric label: only names being served, so that clients cannot grow
    the label set (every new label value is a new time series kept forever)."""
    names = state.model.adapters
    given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("adapter")
    if given:
        return given[0] if given[0] in names else "unknown"
    return next(iter(names)) if len(names) == 1 else "-"


class AccessLog:
    """ASGI middleware: one access-log line and the request metrics per HTTP request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500  # a request that raised before answering is a 500

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            record(scope, status, time.perf_counter() - start)


def record(scope, status: int, seconds: float) -> None:
    state = scope["app"].state
    adapter = adapter_label(state, scope)
    if scope["path"] in MEASURED_PATHS:
        state.metrics.requests.labels(adapter, str(status)).inc()
        state.metrics.latency.labels(adapter).observe(seconds)
    if access_log.isEnabledFor(logging.INFO):
        # raw_path is still percent-encoded: a client cannot write a newline into the log
        path = (scope.get("raw_path") or scope["path"].encode("unicode_escape")).decode("latin-1")
        client = scope.get("client") or ("-", 0)
        access_log.info(
            "%s %s %s %d adapter=%s %.1f ms", client[0], scope["method"], path, status, adapter, seconds * 1000
        )
