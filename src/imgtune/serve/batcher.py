"""Micro-batching: requests wait in an asyncio queue; one worker takes up to ``max_batch`` of them
(waiting at most ``max_wait_ms`` for company after the first), runs the engine in a single thread,
and answers each. The queue is bounded: when full, ``submit`` raises QueueFull at once (the server
answers 503) instead of letting waiting images pile up in memory."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from imgtune.serve.limits import MAX_QUEUE


class QueueFull(Exception):
    """The batcher's queue holds ``max_queue`` requests already: try again later."""


class Batcher:
    """Bounded-wait, bounded-size micro-batching in front of MultiAdapterModel.probabilities."""

    def __init__(self, model, max_batch: int = 32, max_wait_ms: float = 5.0, max_queue: int = MAX_QUEUE):
        self.model, self.max_batch, self.max_wait = model, max_batch, max_wait_ms / 1000.0
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=max_queue)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgtune-model")
        self.batches = self.items = 0
        self.observer = None  # told of each batch and each failure: metrics and readiness (serve.health)

    async def submit(self, name: str, pixels):
        future = asyncio.get_running_loop().create_future()
        future.queued_at = future.get_loop().time()  # the observer's queue wait
        try:
            self.queue.put_nowait((name, pixels, future))
        except asyncio.QueueFull:
            raise QueueFull(f"{self.queue.maxsize} requests are waiting already") from None
        return await future

    async def _collect(self) -> list:
        loop = asyncio.get_running_loop()
        items = [await self.queue.get()]
        deadline = loop.time() + self.max_wait
        while len(items) < self.max_batch:
            if not self.queue.empty():
                items.append(self.queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self.queue.get(), left))
            except asyncio.TimeoutError:
                break
        return items

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            live = []
            for item in items:
                if item[2].done():  # its request timed out or its client left: no model time for it
                    continue
                if item[0] in self.model.adapters:  # else an adapter deleted while its requests waited
                    live.append(item)
                elif not item[2].done():
                    item[2].set_exception(KeyError(item[0]))
            if not live:
                continue
            if self.observer:
                now = loop.time()
                self.observer.batch_started([now - getattr(i[2], "queued_at", now) for i in live])
            try:
                rows = await loop.run_in_executor(
                    self.executor, self.model.probabilities, [i[0] for i in live], [i[1] for i in live]
                )
            except Exception as err:  # noqa: BLE001 - every waiting request gets the error, the worker lives on
                for _, _, fut in live:
                    if not fut.done():
                        fut.set_exception(err)
                if self.observer:
                    self.observer.batch_failed()
                continue
            self.batches += 1
            self.items += len(live)
            if self.observer and any(isinstance(row, Exception) for row in rows):
                self.observer.batch_failed()
            for (_, _, fut), row in zip(live, rows):
                if fut.done():
                    continue
                if isinstance(row, Exception):  # the engine failed this request's group only
                    fut.set_exception(row)
                else:
                    fut.set_result(row)
