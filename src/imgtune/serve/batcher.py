"""Micro-batching: requests wait in an asyncio queue; one worker takes up to ``max_batch`` of them
(waiting at most ``max_wait_ms`` for company after the first), runs the engine in a single thread,
and answers each."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor


class Batcher:
    """Bounded-wait, bounded-size micro-batching in front of MultiAdapterModel.probabilities."""

    def __init__(self, model, max_batch: int = 32, max_wait_ms: float = 5.0):
        self.model, self.max_batch, self.max_wait = model, max_batch, max_wait_ms / 1000.0
        self.queue: asyncio.Queue = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgtune-model")
        self.batches = self.items = 0

    async def submit(self, name: str, pixels):
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((name, pixels, future))
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
            for item in items:  # an adapter deleted while its requests waited
                if item[0] in self.model.adapters:
                    live.append(item)
                elif not item[2].done():
                    item[2].set_exception(KeyError(item[0]))
            if not live:
                continue
            try:
                rows = await loop.run_in_executor(
                    self.executor, self.model.probabilities, [i[0] for i in live], [i[1] for i in live]
                )
            except Exception as err:  # noqa: BLE001 - every waiting request gets the error, the worker lives on
                for _, _, fut in live:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            self.batches += 1
            self.items += len(live)
            for (_, _, fut), row in zip(live, rows):
                if fut.done():
                    continue
                if isinstance(row, Exception):  # the engine failed this request's group only
                    fut.set_exception(row)
                else:
                    fut.set_result(row)
