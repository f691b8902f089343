"""The HTTP layer of ``imgtune serve`` (FastAPI): reading uploads, the endpoints, the app.

Endpoints are plain functions on a router; what they share (the engine, the batcher, the limits)
lives on ``app.state``. Decoding runs in the thread pool per request, so a slow upload never holds
up the batch.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoint annotations at run time
import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from starlette.requests import Request as StarletteRequest

from imgtune.data.decode import BadImage, TooLarge
from imgtune.errors import UserError
from imgtune.inference.predict import top_k as rank_labels
from imgtune.serve import admin, health, page
from imgtune.serve.admin import AdminSettings
from imgtune.serve.batcher import Batcher, QueueFull
from imgtune.serve.engine import NAME_PATTERN, MultiAdapterModel
from imgtune.serve.limits import MAX_BYTES, MAX_PIXELS, MULTIPART_ALLOWANCE, RAW_TYPES, RETRY_AFTER, RequestLimits
from imgtune.serve.metrics import AccessLog, ServeMetrics
from imgtune.serve.schema import (
    ADMIN_AUTH,
    CLASSIFY_ERRORS,
    IMAGE_BODY,
    AdapterListing,
    Classification,
    Health,
    Rescanned,
)

router = APIRouter()


@dataclass(frozen=True)
class Limits:
    allow_admin: bool = False
    max_bytes: int = MAX_BYTES
    max_pixels: int = MAX_PIXELS


def create_app(
    model: MultiAdapterModel,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    allow_admin: bool = False,
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
    request_limits: RequestLimits = RequestLimits(),
    admin_token: str | None = None,
    adapter_root: Path | None = None,
) -> FastAPI:
    admin_settings = AdminSettings(allow_admin, admin_token, adapter_root)  # refuses admin without a token
    batcher = Batcher(model, max_batch, max_wait_ms, request_limits.max_queue)

    @asynccontextmanager
    async def lifespan(app):
        worker = asyncio.create_task(batcher.run())
        app.state.readiness.check()
        yield
        worker.cancel()
        batcher.executor.shutdown(wait=False)

    app = FastAPI(
        title="imgtune",
        description="Image classification with many adapters on one base model. Try it from the page at `/`.",
        lifespan=lifespan,
        docs_url=None,  # page.install serves /docs from local files; FastAPI's own loads Swagger UI from a CDN
        redoc_url=None,
    )
    app.state.model, app.state.batcher = model, batcher
    app.state.limits = Limits(allow_admin, max_bytes, max_pixels)
    app.state.request_limits = request_limits
    app.state.decodes = asyncio.Semaphore(request_limits.max_decodes)
    app.state.admin = admin_settings
    app.state.metrics = ServeMetrics(app.state)
    app.state.readiness = health.Readiness(model, batcher.executor)
    batcher.observer = health.BatchObserver(app.state.metrics, app.state.readiness)
    app.add_middleware(AccessLog)
    app.include_router(router)
    app.include_router(health.router)
    app.include_router(admin.router)
    page.install(app)
    return app


# --- reading a request ------------------------------------------------------------------


def known(model: MultiAdapterModel, name: str | None) -> str:
    if name is None:
        if len(model.adapters) == 1:
            return next(iter(model.adapters))
        raise HTTPException(400, f"pass ?adapter= one of {', '.join(model.adapters)}")
    if not NAME_PATTERN.fullmatch(name) or name not in model.adapters:  # a dict key, never a path
        raise HTTPException(404, f"unknown adapter {name!r}: GET /v1/adapters lists them")
    return name


async def read_limited(request: Request, max_bytes: int, timeout: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MULTIPART_ALLOWANCE:
        raise HTTPException(413, f"request body over the {max_bytes:,}-byte limit")
    chunks = []

    async def read_all() -> None:
        size = 0
        async for chunk in request.stream():  # chunked uploads have no content-length: count as they come
            size += len(chunk)
            if size > max_bytes + MULTIPART_ALLOWANCE:
                raise HTTPException(413, f"request body over the {max_bytes:,}-byte limit")
            chunks.append(chunk)

    try:
        # the whole body, not each chunk: a client trickling a byte at a time would hold its connection forever
        # (asyncio.wait_for, not asyncio.timeout: the package supports Python 3.10)
        await asyncio.wait_for(read_all(), timeout)
    except (TimeoutError, asyncio.TimeoutError):
        raise HTTPException(
            408, f"request body not received within {timeout:g} s", headers={"Connection": "close"}
        ) from None
    return b"".join(chunks)


async def multipart_file(request: Request, body: bytes) -> tuple[str, bytes]:
    """(content type, bytes) of the form's ``file`` field, parsed from the already-read body."""

    async def replay():  # hand the size-checked body to starlette's form parser
        return {"type": "http.request", "body": body, "more_body": False}

    form = await StarletteRequest(request.scope, replay).form(max_files=1, max_fields=10)
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise HTTPException(400, "multipart request without a 'file' field")
    return (upload.content_type or "").split(";")[0].strip().lower(), await upload.read()


async def image_bytes(request: Request, max_bytes: int, timeout: float) -> bytes:
    body = await read_limited(request, max_bytes, timeout)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    data = body
    if ctype == "multipart/form-data":
        ctype, data = await multipart_file(request, body)
    if not (ctype.startswith("image/") or ctype in RAW_TYPES):
        raise HTTPException(415, f"unsupported content type {ctype!r}: send an image (image/jpeg, image/png, ...)")
    if not data:
        raise HTTPException(400, "empty image")
    if len(data) > max_bytes:
        raise HTTPException(413, f"image over the {max_bytes:,}-byte limit")
    return data


def decode(model: MultiAdapterModel, name: str, data: bytes, max_pixels: int, limits: RequestLimits):
    """Image bytes -> the adapter's input, with decoding's own checks from the header (pixels, aspect
    ratio, memory): 413 over a limit."""
    try:
        return model.preprocess(name, data, max_pixels, max_aspect=limits.max_aspect, max_bytes=limits.max_decode_bytes)
    except TooLarge as err:
        raise HTTPException(413, f"image too large: {err}") from None
    except BadImage as err:
        raise HTTPException(400, f"cannot read image: {err}") from None
    except KeyError:  # removed while its upload was read
        raise HTTPException(404, f"adapter {name!r} was removed") from None


async def bounded_decode(state, name: str, data: bytes):
    """decode() on a worker thread, at most ``max_decodes`` at once. The slot is freed when the thread
    ends, not when its request is cancelled: a timed-out decode still runs, and still holds its memory."""
    await state.decodes.acquire()
    try:
        job = asyncio.get_running_loop().run_in_executor(
            None, decode, state.model, name, data, state.limits.max_pixels, state.request_limits
        )
    except BaseException:
        state.decodes.release()
        raise
    job.add_done_callback(lambda _: state.decodes.release())
    return await asyncio.shield(job)  # a cancelled request must not cancel the future (and free the slot early)


async def answer(request: Request, name: str):
    """Read, decode and queue one image: (the adapter it was answered by, its probability row)."""
    state = request.app.state
    adapter = state.model.adapters.get(name)
    if adapter is None:
        raise HTTPException(404, f"adapter {name!r} was removed")
    data = await image_bytes(request, state.limits.max_bytes, state.request_limits.read_timeout)
    pixels = await bounded_decode(state, name, data)
    try:
        async with state.model.pool.use(name):  # pinned while queued: no other adapter's load evicts it
            probs = await state.batcher.submit(name, pixels)
        # an admin may remove the name and add another run under it while this request waits: the row is
        # then not this adapter's (other labels, maybe another class count). Adapters are never re-added
        # as the same object, so the same object now as at the start means the batch used it.
        if state.model.adapters.get(name) is not adapter:
            raise KeyError(name)
        return adapter, probs
    except QueueFull as err:
        raise HTTPException(503, f"server busy: {err}", headers={"Retry-After": str(RETRY_AFTER)}) from None
    except KeyError:
        raise HTTPException(404, f"adapter {name!r} was removed") from None
    except UserError as err:  # its files would not load: GET /v1/adapters shows the same last_error
        raise HTTPException(503, f"adapter {name!r} cannot be loaded: {err}") from None


# --- endpoints --------------------------------------------------------------------------


@router.get("/healthz", response_model=Health)
async def healthz(request: Request):
    state = request.app.state
    return {
        "status": "ok",
        "adapters": len(state.model.adapters),
        "batches": state.batcher.batches,
        "images": state.batcher.items,
    }


@router.get("/v1/adapters", response_model=AdapterListing)
async def adapters(request: Request):
    model = request.app.state.model
    pool = model.pool
    return {
        "base": str(model.base),
        "max_resident": pool.max_resident,
        "max_resident_bytes": pool.max_bytes,
        "resident_bytes": pool.resident_bytes,
        "adapters": model.listing(),
    }


@router.post("/v1/rescan", response_model=Rescanned, responses=ADMIN_AUTH)
async def rescan(request: Request):
    """Catalog the adapter runs that appeared under --adapter-dir since the start (loaded on first use)."""
    model = admin.authorized(request)
    added = await asyncio.to_thread(model.rescan)
    return {"added": added, "adapters": len(model.adapters)}


@router.post("/v1/classify", response_model=Classification, responses=CLASSIFY_ERRORS, openapi_extra=IMAGE_BODY)
async def classify(
    request: Request,
    adapter: str | None = Query(None, description="an adapter's name, as GET /v1/adapters lists them"),
    top_k: int = Query(5, ge=1, le=1000, description="how many labels to return, best first"),
):
    """Classify one image with one adapter: the image as multipart field `file` or as the raw request body
    (any image content type, or application/octet-stream). `adapter` may be left out when only one is served."""
    state = request.app.state
    name = known(state.model, adapter)
    timeout = state.request_limits.request_timeout
    try:
        used, probs = await asyncio.wait_for(answer(request, name), timeout)
    except (TimeoutError, asyncio.TimeoutError):
        raise HTTPException(504, f"no answer within {timeout:g} s", headers={"Connection": "close"}) from None
    return {"adapter": name, "predictions": rank_labels(probs, used.labels, top_k)}
