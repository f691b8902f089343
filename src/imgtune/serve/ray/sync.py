"""Ray's multiplex LRU and imgtune's resident pool, kept in agreement.

Inside a replica Ray Serve decides which adapters stay: ``@serve.multiplexed`` keeps an LRU of at most
``max_num_models_per_replica`` model ids, and the router sends a request to a replica whose pushed list
of ids holds its adapter. The pool runs without a cap of its own and follows: Ray's loader makes the
adapter resident and returns an ``AdapterHandle``; when Ray evicts an id it calls the handle's
``__del__`` (on a worker thread, before it loads the next model), and the adapter is taken off the base
model here, counted as an eviction. An adapter with requests in flight is pinned: its eviction waits
until the last of them is answered, unless Ray wants it back first. peft cannot hold no adapter, so
the last resident one waits for its successor too.
"""

from __future__ import annotations

import functools
import logging
import threading

log = logging.getLogger(__name__)


class AdapterHandle:
    """What Ray's multiplex LRU holds for one adapter. Ray calls ``handle.__del__()`` when it evicts the
    id; that is an instance attribute here, so the class has no ``__del__`` and garbage collection
    (which would call the class's, on any thread, perhaps inside the pool's lock) does nothing."""

    def __init__(self, name: str, sync: MultiplexSync):
        self.name = name
        self.__del__ = functools.partial(sync.evicted, name)

    def __repr__(self) -> str:
        return f"AdapterHandle({self.name!r})"


class MultiplexSync:
    """Evictions decided by Ray, applied to a ``ResidentPool`` (``imgtune.serve.pool``) whose own caps are
    off; the pool queues each unload behind any load already asked for."""

    def __init__(self, pool):
        if pool.max_resident is not None or getattr(pool, "max_bytes", None) is not None:
            raise ValueError("the pool follows Ray's multiplex LRU: give it no cap of its own")
        self.pool = pool
        self.doomed: set[str] = set()  # evicted by Ray, still on the model: pinned, or the last one
        self._lock = threading.Lock()

    def handle(self, name: str) -> AdapterHandle:
        """Ray has (re)loaded ``name``: a deferred eviction of it is called off."""
        with self._lock:
            self.doomed.discard(name)
        return AdapterHandle(name, self)

    def evicted(self, name: str) -> None:
        """Ray evicted ``name`` (called from a worker thread): off the model now, or when its pins go."""
        with self._lock:
            self.doomed.add(name)
            self.doomed -= self.pool.evict(list(self.doomed))

    def settle(self) -> None:
        """Apply the evictions that were waiting; call after unpinning and after each load."""
        with self._lock:
            if self.doomed:
                self.doomed -= self.pool.evict(list(self.doomed))

    def count_lookup(self, name: str) -> bool:
        """A request for ``name``: a hit if it is on the model now, else a miss; returns which."""
        return self.pool.count_request(name)
