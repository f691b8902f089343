"""The HTTP layer of ``imgtune serve`` (FastAPI): reading uploads, the endpoints, the app.

Endpoints are plain functions on a router; what they share (the engine, the batcher, the limits)
lives on ``app.state``. Decoding runs in the thread pool per request, so a slow upload never holds
up the batch.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoint annotations at run time
import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import APIRouter, Body, FastAPI, HTTPException, Query, Request
from starlette.requests import Request as StarletteRequest

from imgtune.data.decode import BadImage, TooLarge
from imgtune.errors import UserError
from imgtune.serve.batcher import Batcher
from imgtune.serve.engine import NAME_PATTERN, MultiAdapterModel, check_name
from imgtune.serve.limits import MAX_BYTES, MAX_PIXELS, MULTIPART_ALLOWANCE, RAW_TYPES

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
) -> FastAPI:
    batcher = Batcher(model, max_batch, max_wait_ms)

    @asynccontextmanager
    async def lifespan(app):
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()
        batcher.executor.shutdown(wait=False)

    app = FastAPI(
        title="imgtune", description="Image classification with many adapters on one base model", lifespan=lifespan
    )
    app.state.model, app.state.batcher = model, batcher
    app.state.limits = Limits(allow_admin, max_bytes, max_pixels)
    app.include_router(router)
    return app


# --- reading a request ------------------------------------------------------------------


def known(model: MultiAdapterModel, name: str | None) -> str:
    if name is None:
        if len(model.adapters) == 1:
            return next(iter(model.adapters))
        raise HTTPException(400, f"pass ?adapter= one of {', '.join(model.adapters)}")
    if not NAME_PATTERN.match(name) or name not in model.adapters:  # a dict key, never a path
        raise HTTPException(404, f"unknown adapter {name!r}: GET /v1/adapters lists them")
    return name


async def read_limited(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MULTIPART_ALLOWANCE:
        raise HTTPException(413, f"request body over the {max_bytes:,}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():  # chunked uploads have no content-length: count as they come
        size += len(chunk)
        if size > max_bytes + MULTIPART_ALLOWANCE:
            raise HTTPException(413, f"request body over the {max_bytes:,}-byte limit")
        chunks.append(chunk)
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


async def image_bytes(request: Request, max_bytes: int) -> bytes:
    body = await read_limited(request, max_bytes)
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


def decode(model: MultiAdapterModel, name: str, data: bytes, max_pixels: int):
    """Image bytes -> the adapter's input, with decoding's own size check: 413 over the limit."""
    try:
        return model.preprocess(name, data, max_pixels)
    except TooLarge as err:
        raise HTTPException(413, f"image over the pixel limit: {err}") from None
    except BadImage as err:
        raise HTTPException(400, f"cannot read image: {err}") from None


# --- endpoints --------------------------------------------------------------------------


@router.get("/healthz")
async def healthz(request: Request):
    state = request.app.state
    return {
        "status": "ok",
        "adapters": len(state.model.adapters),
        "batches": state.batcher.batches,
        "images": state.batcher.items,
    }


@router.get("/v1/adapters")
async def adapters(request: Request):
    model = request.app.state.model
    return {"base": model.base, "adapters": [a.describe() for a in model.adapters.values()]}


@router.post("/v1/classify")
async def classify(request: Request, adapter: str | None = Query(None), top_k: int = Query(5, ge=1, le=1000)):
    """The image as multipart field ``file`` or as the raw request body."""
    state = request.app.state
    name = known(state.model, adapter)
    data = await image_bytes(request, state.limits.max_bytes)
    pixels = await asyncio.to_thread(decode, state.model, name, data, state.limits.max_pixels)
    try:
        probs = await state.batcher.submit(name, pixels)
    except KeyError:
        raise HTTPException(404, f"adapter {name!r} was removed") from None
    return {"adapter": name, "predictions": state.model.top_k(name, probs, top_k)}


def admin(request: Request) -> MultiAdapterModel:
    if not request.app.state.limits.allow_admin:
        raise HTTPException(403, "adapter management is off: start the server with --allow-admin")
    return request.app.state.model


@router.post("/v1/adapters/{name}", status_code=201)
async def add_adapter(request: Request, name: str, body: dict = Body(..., examples=[{"path": "runs/food-lora"}])):
    model = admin(request)
    path = body.get("path")
    if not isinstance(path, str) or not path:
        raise HTTPException(400, 'body must be JSON {"path": "<imgtune output directory>"}')
    try:
        check_name(name)
    except UserError as err:
        raise HTTPException(400, str(err)) from None
    if name in model.adapters:
        raise HTTPException(409, f"adapter {name!r} is already loaded: DELETE it first")
    try:
        added = await asyncio.to_thread(model.add, name, path)
    except UserError as err:
        raise HTTPException(400, str(err)) from None
    return added.describe()


@router.delete("/v1/adapters/{name}")
async def delete_adapter(request: Request, name: str):
    model = admin(request)
    if name not in model.adapters:
        raise HTTPException(404, f"unknown adapter {name!r}")
    try:
        await asyncio.to_thread(model.remove, name)
    except UserError as err:
        raise HTTPException(409, str(err)) from None
    return {"deleted": name}
