"""One Ray Serve replica: imgtune's engine (one base model, its resident adapters), its batcher
(mixed-adapter batches: requests for several adapters share one backbone pass) and Ray's multiplexing
with the adapter name as the model id.

Ray's ``@serve.batch`` is not used: it groups requests by multiplexed model id, so a batch would hold
one adapter's requests only, while imgtune's batcher puts every waiting request of this replica into
one pass whatever its adapter. ``@serve.multiplexed`` is applied in the constructor, because its cap is
a setting (``max_resident``); what it evicts leaves the pool through ``sync``.

Requests come from the ingress as (adapter, image bytes, top_k) and are answered as plain dicts
(status, body, headers, replica), errors included, so no exception has to cross the process boundary.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from fastapi import HTTPException
from ray import serve

from imgtune.errors import UserError
from imgtune.serve import health
from imgtune.serve.app import Limits, bounded_decode, known
from imgtune.serve.batcher import Batcher, QueueFull
from imgtune.serve.catalog import NAME_PATTERN
from imgtune.serve.limits import RETRY_AFTER
from imgtune.serve.ray.metrics import REPORT_INTERVAL, ReplicaMetrics, snapshot
from imgtune.serve.ray.settings import Settings
from imgtune.serve.ray.sync import MultiplexSync

log = logging.getLogger(__name__)
RESCAN_EVERY = 2.0  # seconds: an unknown adapter name rescans the adapter folders at most this often


def reply(status: int, body: dict, replica: str, headers: dict | None = None) -> dict:
    return {"status": status, "body": body, "headers": dict(headers or {}), "replica": replica}


@dataclass
class DecodeState:
    """What ``imgtune.serve.app.bounded_decode`` reads from an app's state."""

    model: object
    limits: Limits
    request_limits: object
    decodes: asyncio.Semaphore


@serve.deployment(name="ImgtuneReplica")
class ImgtuneReplica:
    async def __init__(self, settings: Settings, stats):
        self.id = serve.get_replica_context().replica_id.unique_id
        self.settings, self.stats = settings, stats
        self.model = await asyncio.to_thread(settings.build_model)
        limits = settings.request_limits
        self.batcher = Batcher(self.model, settings.max_batch, settings.max_wait_ms, limits.max_queue)
        self.readiness = health.Readiness(self.model, self.batcher.executor)
        self.metrics = ReplicaMetrics()
        self.batcher.observer = health.BatchObserver(self.metrics, self.readiness)
        self.decoding = DecodeState(
            self.model, Limits(False, settings.max_bytes, settings.max_pixels), limits,
            asyncio.Semaphore(limits.max_decodes),
        )  # fmt: skip
        self.sync = MultiplexSync(self.model.pool)
        self.get_adapter = serve.multiplexed(max_num_models_per_replica=settings.max_resident or -1)(self._loader())
        self.last_rescan = 0.0
        self.tasks = [asyncio.create_task(self.batcher.run()), asyncio.create_task(self._report_forever())]
        for name in list(self.model.pool.resident):  # loaded at start (the first, --preload): Ray's LRU knows them
            await self.get_adapter(name)
        await self._probe()
        if not self.readiness.ready:
            raise RuntimeError(f"the model does not answer: {self.readiness.reason}")
        log.info("replica %s ready with %s", self.id, ", ".join(self.model.pool.resident))

    def _loader(self):
        """Ray's multiplexed loader (a plain function: Ray keeps its LRU on the function object)."""
        pool, sync, metrics = self.model.pool, self.sync, self.metrics

        async def load_adapter(adapter: str):
            started = time.perf_counter()
            handle = sync.handle(adapter)
            loads = pool.loads
            await asyncio.wrap_future(pool.request(adapter, count=False))
            if pool.loads > loads:
                metrics.load_latency.observe(time.perf_counter() - started)
            sync.settle()  # an eviction that waited for a successor (peft holds at least one adapter)
            return handle

        return load_adapter

    async def _probe(self) -> None:
        self.readiness.check()
        await self.readiness.probing

    # --- requests -----------------------------------------------------------------------

    async def classify(self, adapter: str, data: bytes, top_k: int) -> dict:
        try:
            return reply(200, await self._answer(adapter, data, top_k), self.id)
        except HTTPException as err:
            return reply(err.status_code, {"detail": err.detail}, self.id, err.headers)

    async def _answer(self, adapter: str, data: bytes, top_k: int) -> dict:
        name = await self._known(adapter)
        pixels = await bounded_decode(self.decoding, name, data)
        pool = self.model.pool
        pool.pin([name])
        try:
            self.sync.count_lookup(name)
            await self.get_adapter(name)  # Ray's LRU: may evict its least recently used adapter first
            probs = await self.batcher.submit(name, pixels)
        except QueueFull as err:
            raise HTTPException(503, f"server busy: {err}", headers={"Retry-After": str(RETRY_AFTER)}) from None
        except KeyError:
            raise HTTPException(404, f"adapter {name!r} was removed") from None
        except UserError as err:  # its files would not load
            raise HTTPException(503, f"adapter {name!r} cannot be loaded: {err}") from None
        finally:
            pool.unpin([name])
            self.sync.settle()
        return {"adapter": name, "predictions": self.model.top_k(name, probs, top_k)}

    async def _known(self, name: str) -> str:
        """The adapter's name if the catalog has it; an unknown one rescans the adapter folders first (at
        most every RESCAN_EVERY seconds), so runs copied there later are found without a restart."""
        catalog = self.model.catalog
        fresh = time.monotonic() - self.last_rescan > RESCAN_EVERY
        if NAME_PATTERN.fullmatch(name) and name not in catalog.adapters and catalog.roots and fresh:
            self.last_rescan = time.monotonic()
            await asyncio.to_thread(catalog.scan)
        return known(self.model, name)

    async def ready(self) -> dict:
        if not self.readiness.ready:
            await self._probe()
        state = (
            {"status": "ready"} if self.readiness.ready else {"status": "not ready", "reason": self.readiness.reason}
        )
        return reply(200 if self.readiness.ready else 503, state, self.id)

    # --- Ray's hooks and the reports ------------------------------------------------------

    async def check_health(self) -> None:
        """Ray replaces a replica whose health check raises: when the batch worker died, or when the
        model still fails a probe after a failed batch."""
        if self.tasks[0].done():
            raise RuntimeError("the batch worker stopped")
        if not self.readiness.ready:
            await self._probe()
            if not self.readiness.ready:
                raise RuntimeError(self.readiness.reason)

    async def _report_forever(self) -> None:
        while True:
            try:
                state = snapshot(self.model, self.batcher, self.readiness.ready)
                self.metrics.update(state)
                await asyncio.wait_for(self.stats.report.remote(self.id, state), REPORT_INTERVAL * 5)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - a missed report is no reason to stop serving
                log.debug("replica %s could not report: %s", self.id, err)
            await asyncio.sleep(REPORT_INTERVAL)

    def __del__(self):
        for task in getattr(self, "tasks", []):
            task.cancel()
        if hasattr(self, "batcher"):
            self.batcher.executor.shutdown(wait=False)
            self.model.pool.close()
