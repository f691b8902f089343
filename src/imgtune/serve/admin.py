"""Adapter management over HTTP (``POST``/``DELETE /v1/adapters/NAME``), safe to turn on.

Off unless the server was started with it; then every call needs ``Authorization: Bearer <token>``
(compared in constant time), adapters are read only from under the adapter root (symlinks resolved
first), and a body is refused by its size before any of it is parsed.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoint annotations at run time
import asyncio
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request

from imgtune.errors import UserError
from imgtune.serve.catalog import NAME_PATTERN
from imgtune.serve.engine import MultiAdapterModel, error_gist
from imgtune.serve.limits import READ_TIMEOUT
from imgtune.serve.schema import ADMIN_ADD_ERRORS, ADMIN_DELETE_ERRORS, AdapterSummary, Deleted

MAX_BODY = 4096  # {"path": ...} needs a few hundred bytes at most
router = APIRouter(tags=["admin"])

ADD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["path"],
                    "properties": {"path": {"type": "string", "description": "a run directory under the adapter root"}},
                },
                "example": {"path": "food-lora"},
            }
        },
    }
}


@dataclass(frozen=True)
class AdminSettings:
    enabled: bool = False
    token: str | None = None
    root: Path | None = None  # adapters are added only from under it; None: not by path at all

    def __post_init__(self):
        if self.enabled and not self.token:
            raise UserError(
                "--allow-admin needs --admin-token TOKEN (or IMGTUNE_ADMIN_TOKEN): admin calls are authenticated"
            )


def authorized(request: Request) -> MultiAdapterModel:
    settings: AdminSettings = request.app.state.admin
    if not settings.enabled:
        raise HTTPException(403, "adapter management is off: start the server with --allow-admin")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # bytes: compare_digest refuses non-ASCII str, and a client must not be able to raise a 500 with one
    if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), settings.token.encode()):
        raise HTTPException(401, "missing or wrong admin token", headers={"WWW-Authenticate": "Bearer"})
    return request.app.state.model


def checked_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):  # fullmatch: `$` alone lets a trailing newline through
        raise HTTPException(400, f"adapter name {name!r} must match {NAME_PATTERN.pattern}")
    return name


async def json_body(request: Request) -> dict:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY:
        raise HTTPException(413, f"body over the {MAX_BODY}-byte limit")
    chunks = []

    async def read():
        size = 0
        async for chunk in request.stream():  # chunked bodies have no content-length: count as they come
            size += len(chunk)
            if size > MAX_BODY:
                raise HTTPException(413, f"body over the {MAX_BODY}-byte limit")
            chunks.append(chunk)

    try:  # a trickled body would hold the connection: the same bound as uploads
        limits = getattr(request.app.state, "request_limits", None)
        await asyncio.wait_for(read(), getattr(limits, "read_timeout", READ_TIMEOUT))
    except asyncio.TimeoutError:
        raise HTTPException(408, "request body not received in time", headers={"Connection": "close"}) from None
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("path"), str) or not body["path"]:
        raise HTTPException(400, 'body must be JSON {"path": "<imgtune output directory>"}')
    return body


def confined(root: Path | None, path: str) -> Path:
    """The adapter folder, resolved (symlinks and ``..`` included); 403 unless it lies under ``root``.
    A relative path is taken from the root."""
    if root is None:
        raise HTTPException(403, "adding adapters by path is off: start the server with --adapter-root DIR")
    base = root.resolve()
    try:
        target = (base / path).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        raise HTTPException(400, f"cannot resolve path {path!r}") from None
    if not target.is_relative_to(base):
        raise HTTPException(403, f"path {path!r} is outside the adapter root")
    return target


@router.post("/v1/adapters/{name}", status_code=201, response_model=AdapterSummary, responses=ADMIN_ADD_ERRORS,
             openapi_extra=ADD_BODY)  # fmt: skip
async def add_adapter(request: Request, name: str):
    """Load a run directory under ``name`` (body ``{"path": ...}``, relative to the adapter root)."""
    model = authorized(request)
    checked_name(name)
    body = await json_body(request)
    target = confined(request.app.state.admin.root, body["path"])
    if name in model.adapters:
        raise HTTPException(409, f"adapter {name!r} is already loaded: DELETE it first")
    try:
        added = await asyncio.to_thread(model.add, name, target)
    except UserError as err:
        raise HTTPException(400, str(err)) from None
    except (OSError, ValueError) as err:  # a library's reader on a damaged file
        raise HTTPException(400, f"cannot load {body['path']!r}: {error_gist(err)}") from None
    request.app.state.readiness.check()  # the new adapter answers too, or /readyz says why
    return added.describe()


@router.delete("/v1/adapters/{name}", response_model=Deleted, responses=ADMIN_DELETE_ERRORS)
async def delete_adapter(request: Request, name: str):
    model = authorized(request)
    checked_name(name)
    if name not in model.adapters:
        raise HTTPException(404, f"unknown adapter {name!r}")
    try:
        await asyncio.to_thread(model.remove, name)
    except KeyError:
        raise HTTPException(404, f"unknown adapter {name!r}") from None
    except UserError as err:
        raise HTTPException(409, str(err)) from None
    return {"deleted": name}
