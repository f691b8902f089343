"""Health that tells the truth: ``/livez`` (the process answers), ``/readyz`` (the model answers), ``/metrics``.

Readiness is a tiny forward of a blank image for every adapter, run on the model's own thread (so it
queues behind batches instead of racing them): at start, after any failed batch, and on a ``/readyz``
while not ready, so a server that recovered says so without a restart.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoint annotations at run time
import asyncio

import torch
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from imgtune.serve.metrics import CONTENT_TYPE
from imgtune.serve.schema import NOT_READY, PROMETHEUS, Status

router = APIRouter()


def error_line(err: BaseException, limit: int = 200) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Readiness:
    def __init__(self, model, executor):
        self.model, self.executor = model, executor
        self.ready, self.reason = False, "starting: the model has not answered yet"
        self.probing: asyncio.Future | None = None

    def probe(self) -> None:
        """One blank image per resident adapter through the engine (mixable adapters share a forward); the
        others are not loaded for it: with a resident cap that would evict the ones in use."""
        adapters = self.model.adapters
        resident = getattr(getattr(self.model, "pool", None), "resident", adapters)
        names = [n for n in adapters if n in resident] or list(adapters)[:1]
        blank = [torch.zeros(3, adapters[n].spec.size, adapters[n].spec.size, dtype=torch.uint8) for n in names]
        try:
            rows = self.model.probabilities(names, blank)
        except Exception as err:  # noqa: BLE001 - any failure is the answer, not a crash
            rows = [err] * len(names)
        failed = [f"{n}: {error_line(r)}" for n, r in zip(names, rows) if isinstance(r, Exception)]
        self.ready = not failed
        self.reason = "; ".join(failed) if failed else "ok"

    def check(self) -> None:
        """Start a probe unless one is running; call from the event loop."""
        if self.probing is None or self.probing.done():
            self.probing = asyncio.get_running_loop().run_in_executor(self.executor, self.probe)

    def batch_failed(self) -> None:
        # not 503 at once: a request's own error (its adapter removed meanwhile) fails a batch too; the
        # probe, queued right behind, decides
        self.check()


class BatchObserver:
    """What the batcher reports: each batch to the metrics, each failed batch to readiness."""

    def __init__(self, metrics, readiness: Readiness):
        self.metrics, self.readiness = metrics, readiness

    def batch_started(self, waits: list[float]) -> None:
        self.metrics.batch_started(waits)

    def batch_failed(self) -> None:
        self.readiness.batch_failed()


@router.get("/livez", responses={200: {"model": Status}})
async def livez():
    return {"status": "ok"}


@router.get("/readyz", responses={200: {"model": Status}, **NOT_READY})
async def readyz(request: Request):
    readiness = request.app.state.readiness
    if readiness.ready:
        return {"status": "ready"}
    readiness.check()
    return JSONResponse({"status": "not ready", "reason": readiness.reason}, status_code=503)


@router.get("/metrics", response_class=Response, responses=PROMETHEUS)
async def metrics(request: Request):
    """Prometheus text format."""
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE)
