"""The resident pool: which catalog adapters are on the base model now, with a least-recently-used cap
on their number and/or on the bytes their weights take.

Loads and unloads run on one loader thread, so they happen in the order they were asked for (an
adapter evicted and wanted again is unloaded before it is loaded) and never on the thread that runs
batches: a cold adapter loads while the others keep serving. An adapter with requests in flight is
pinned and never evicted; when every resident adapter is pinned the cap is exceeded for a moment and
restored when the pins go.

The counters are plain attributes for whoever exposes metrics: ``loads``, ``evictions``, ``hits``,
``misses``, ``load_seconds``, per adapter ``load_counts`` and ``last_error``; ``resident`` maps each resident
adapter to the bytes its weights take.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager

log = logging.getLogger(__name__)


class ResidentPool:
    def __init__(
        self,
        load: Callable[[str], int | None],
        unload: Callable[[str], None],
        max_resident: int | None = None,
        max_bytes: int | None = None,
    ):
        """``load(name)`` attaches an adapter and returns the bytes its weights take on the model."""
        if max_resident is not None and max_resident < 1:
            raise ValueError("max_resident must be at least 1")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self._load, self._unload = load, unload
        self.max_resident, self.max_bytes = max_resident, max_bytes
        self.resident: OrderedDict[str, int] = OrderedDict()  # name -> bytes, least recently used first
        self.pins: Counter[str] = Counter()
        self.loads = self.evictions = self.hits = self.misses = 0
        self.load_seconds = 0.0
        self.load_counts: Counter[str] = Counter()
        self.last_error: dict[str, str | None] = {}
        self._loading: dict[str, Future] = {}
        # guards the bookkeeping only, never held across a load or the inference lock
        self._mutex = threading.Lock()
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgtune-loader")

    # --- asking for adapters -----------------------------------------------------------

    def request(self, name: str, count: bool = True) -> Future:
        """A future that is done when ``name`` is resident (or failed to load); counts a hit or a miss
        unless ``count`` is false (a batch re-checking what its requests already asked for)."""
        with self._mutex:
            if name in self.resident:
                self.hits += count
                self.resident.move_to_end(name)
                done: Future = Future()
                done.set_result(None)
                return done
            self.misses += count
            if name not in self._loading:
                self._loading[name] = self.loader.submit(self._do_load, name)
            return self._loading[name]

    def ensure(self, names, count: bool = True) -> dict[str, BaseException]:
        """Make ``names`` resident, waiting here; returns the errors of those that would not load."""
        errors = {}
        for name, future in [(n, self.request(n, count)) for n in dict.fromkeys(names)]:
            try:
                future.result()
            except Exception as err:  # noqa: BLE001 - each adapter's failure is its own requests' answer
                errors[name] = err
        return errors

    def pin(self, names) -> None:
        with self._mutex:
            self.pins.update(names)

    def unpin(self, names) -> None:
        with self._mutex:
            self.pins.subtract(names)
            self.pins += Counter()  # drop the zeros
            self._trim()

    @contextmanager
    def pinned(self, names):
        names = list(names)
        self.pin(names)
        try:
            yield
        finally:
            self.unpin(names)

    @asynccontextmanager
    async def use(self, name: str):
        """Pinned for the whole request and resident on entry; a cold load waits without blocking the loop."""
        self.pin([name])
        try:
            await asyncio.wrap_future(self.request(name))
            yield
        finally:
            self.unpin([name])

    # --- loading and evicting ----------------------------------------------------------

    def mark_resident(self, name: str, seconds: float = 0.0, size: int = 0) -> None:
        """An adapter loaded outside the pool (the first one, which makes the peft model)."""
        with self._mutex:
            self.resident[name] = size
            self._count_load(name, seconds)

    def _count_load(self, name: str, seconds: float) -> None:
        self.loads += 1
        self.load_counts[name] += 1
        self.load_seconds += seconds
        self.last_error[name] = None

    def _do_load(self, name: str) -> None:
        start = time.perf_counter()
        try:
            size = self._load(name)
        except BaseException as err:
            with self._mutex:
                self.last_error[name] = str(err) or type(err).__name__
                self._loading.pop(name, None)
            raise
        with self._mutex:
            self.resident[name] = int(size or 0)
            self._count_load(name, time.perf_counter() - start)
            self._loading.pop(name, None)
            self._trim()

    @property
    def resident_bytes(self) -> int:
        return sum(list(self.resident.values()))

    def _over_cap(self) -> bool:
        over_count = self.max_resident is not None and len(self.resident) > self.max_resident
        return over_count or (self.max_bytes is not None and self.resident_bytes > self.max_bytes)

    def _trim(self) -> None:
        """Evict unpinned adapters, least recently used first, down to the caps; the caller holds the mutex.
        The unloads are queued on the loader, behind any load already asked for. One adapter always stays
        (peft cannot hold none), even when it alone is over the byte cap."""
        for name in list(self.resident):
            if not self._over_cap():
                break
            if self.pins[name] > 0 or len(self.resident) == 1:
                continue
            self._evict(name)

    def _evict(self, name: str) -> None:
        """Off the books now, off the model when the loader gets to it; the caller holds the mutex."""
        del self.resident[name]
        self.evictions += 1
        self.loader.submit(self._quiet_unload, name)

    def evict(self, names) -> set[str]:
        """Evict these adapters now where nothing holds them (not pinned, not the last one), for a caller
        that decides evictions itself (Ray's multiplex LRU). Returns the names settled: evicted, or not
        resident anyway; the others are still held."""
        settled = set()
        with self._mutex:
            for name in names:
                if name in self.resident and (self.pins[name] > 0 or len(self.resident) <= 1):
                    continue
                if name in self.resident:
                    self._evict(name)
                settled.add(name)
        return settled

    def count_request(self, name: str) -> bool:
        """Count a request that finds ``name`` resident (a hit) or not (a miss); returns which."""
        with self._mutex:
            hit = name in self.resident
            self.hits += hit
            self.misses += not hit
        return hit

    def _quiet_unload(self, name: str) -> None:
        try:
            self._unload(name)
        except Exception:  # an unload that fails leaves a stale copy on the model, never a broken server
            log.exception("could not unload adapter %r", name)

    def forget(self, name: str) -> None:
        """Take ``name`` off the model now (the adapter was removed), not counted as an eviction."""
        with self._mutex:
            was_resident = name in self.resident
            self.resident.pop(name, None)
        if was_resident:
            self.loader.submit(self._unload, name).result()
        self.last_error.pop(name, None)

    def is_resident(self, name: str) -> bool:
        return name in self.resident

    def state_of(self, name: str) -> dict:
        return {
            "resident": name in self.resident,
            "bytes": self.resident.get(name),
            "loads": self.load_counts[name],
            "last_error": self.last_error.get(name),
        }

    def close(self) -> None:
        self.loader.shutdown(wait=False, cancel_futures=True)
