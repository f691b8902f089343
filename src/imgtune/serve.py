"""``imgtune serve``: one base model, many adapters, micro-batched HTTP classification (FastAPI + uvicorn).

Requests wait in an asyncio queue; one worker takes up to ``max_batch`` of them (waiting at most
``max_wait_ms`` for company after the first), runs the model in a single thread, and answers each.
Decoding runs in the thread pool per request, so a slow upload never holds up the batch.
"""
# no `from __future__ import annotations`: FastAPI reads the endpoint annotations, and the fastapi
# names they refer to are imported inside create_app (kept out of `imgtune --help`)
import argparse
import asyncio
import errno
import io
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .errors import UserError

MAX_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000
RAW_TYPES = ("application/octet-stream", "")  # a raw body of unknown type is sniffed by PIL


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
                rows = await loop.run_in_executor(self.executor, self.model.probabilities,
                                                  [i[0] for i in live], [i[1] for i in live])
            except Exception as err:  # noqa: BLE001 - every waiting request gets the error, the worker lives on
                for _, _, fut in live:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            self.batches += 1
            self.items += len(live)
            for (_, _, fut), row in zip(live, rows):
                if not fut.done():
                    fut.set_result(row)


def create_app(model, max_batch: int = 32, max_wait_ms: float = 5.0, allow_admin: bool = False,
               max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS):
    from contextlib import asynccontextmanager

    from fastapi import Body, FastAPI, HTTPException, Query, Request
    from PIL import Image, UnidentifiedImageError
    from starlette.requests import Request as StarletteRequest

    from .images import STREAM_REPR, BadImage
    from .multi import NAME_PATTERN, check_name

    batcher = Batcher(model, max_batch, max_wait_ms)

    @asynccontextmanager
    async def lifespan(app):
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()
        batcher.executor.shutdown(wait=False)

    app = FastAPI(title="imgtune", description="Image classification with many adapters on one base model",
                  lifespan=lifespan)
    app.state.batcher = batcher

    def known(name: str | None) -> str:
        if name is None:
            if len(model.adapters) == 1:
                return next(iter(model.adapters))
            raise HTTPException(400, f"pass ?adapter= one of {', '.join(model.adapters)}")
        if not NAME_PATTERN.match(name) or name not in model.adapters:  # a dict key, never a path
            raise HTTPException(404, f"unknown adapter {name!r}: GET /v1/adapters lists them")
        return name

    async def read_limited(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes + 65536:
            raise HTTPException(413, f"request body over the {max_bytes:,}-byte limit")
        chunks, size = [], 0
        async for chunk in request.stream():  # chunked uploads have no content-length: count as they come
            size += len(chunk)
            if size > max_bytes + 65536:  # multipart framing allowance
                raise HTTPException(413, f"request body over the {max_bytes:,}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    async def image_bytes(request: Request) -> bytes:
        body = await read_limited(request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            async def replay():  # hand the already-read (size-checked) body to starlette's form parser
                return {"type": "http.request", "body": body, "more_body": False}

            form = await StarletteRequest(request.scope, replay).form(max_files=1, max_fields=10)
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPException(400, "multipart request without a 'file' field")
            ctype = (upload.content_type or "").split(";")[0].strip().lower()
            data = await upload.read()
        else:
            data = body
        if not (ctype.startswith("image/") or ctype in RAW_TYPES):
            raise HTTPException(415, f"unsupported content type {ctype!r}: send an image (image/jpeg, image/png, ...)")
        if not data:
            raise HTTPException(400, "empty image")
        if len(data) > max_bytes:
            raise HTTPException(413, f"image over the {max_bytes:,}-byte limit")
        return data

    def decode(name: str, data: bytes):
        try:  # header only: refuse huge images before decoding them
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
        except Image.DecompressionBombError as err:
            raise HTTPException(413, f"image over the pixel limit: {err}") from None
        except UnidentifiedImageError:  # its message shows the BytesIO object's repr, which says nothing
            raise HTTPException(400, "cannot read image: cannot identify image file (not an image, or an "
                                     "unsupported format)") from None
        except (OSError, ValueError, SyntaxError) as err:
            raise HTTPException(400, f"cannot read image: {STREAM_REPR.sub('', str(err))}") from None
        if width * height > max_pixels:
            raise HTTPException(413, f"{width}x{height} image is over the {max_pixels:,}-pixel limit")
        try:
            return model.preprocess(name, data, max_pixels)
        except BadImage as err:
            raise HTTPException(400, f"cannot read image: {err}") from None

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "adapters": len(model.adapters), "batches": batcher.batches, "images": batcher.items}

    @app.get("/v1/adapters")
    async def adapters():
        return {"base": model.base, "adapters": [a.describe() for a in model.adapters.values()]}

    @app.post("/v1/classify")
    async def classify(request: Request, adapter: str | None = Query(None), top_k: int = Query(5, ge=1, le=1000)):
        """The image as multipart field ``file`` or as the raw request body."""
        name = known(adapter)
        data = await image_bytes(request)
        pixels = await asyncio.to_thread(decode, name, data)
        try:
            probs = await batcher.submit(name, pixels)
        except KeyError:
            raise HTTPException(404, f"adapter {name!r} was removed") from None
        return {"adapter": name, "predictions": model.top_k(name, probs, top_k)}

    def admin() -> None:
        if not allow_admin:
            raise HTTPException(403, "adapter management is off: start the server with --allow-admin")

    @app.post("/v1/adapters/{name}", status_code=201)
    async def add_adapter(name: str, body: dict = Body(..., examples=[{"path": "runs/food-lora"}])):
        admin()
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

    @app.delete("/v1/adapters/{name}")
    async def delete_adapter(name: str):
        admin()
        if name not in model.adapters:
            raise HTTPException(404, f"unknown adapter {name!r}")
        try:
            await asyncio.to_thread(model.remove, name)
        except UserError as err:
            raise HTTPException(409, str(err)) from None
        return {"deleted": name}

    return app


def parse_adapters(values: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--adapter {value!r}: use NAME=OUTPUT_DIR")
        if not Path(path).expanduser().is_dir():
            raise UserError(f"--adapter {name}: {path} is not a directory")
        pairs.append((name, path))
    return pairs


def port_number(value: str) -> int:
    """argparse type for --port: an out-of-range port would otherwise end in an OverflowError traceback."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (0..65535)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0..65535)")
    return port


def check_listen(host: str, port: int) -> None:
    """Bind every address uvicorn will bind (as asyncio does: SO_REUSEADDR, IPv6 sockets v6-only), then let
    go, so a taken port is a one-line error before the model loads, not uvicorn's after it."""
    where = f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise UserError(f"cannot listen on {where}: unknown host ({err.strerror}): check --host") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    raise UserError(f"cannot listen on {where}: address already in use (pick another --port)") from None
                if err.errno == errno.EACCES:
                    raise UserError(f"cannot listen on {where}: permission denied (ports below 1024 need root: "
                                    "pick another --port)") from None
                raise UserError(f"cannot listen on {where}: {err.strerror or err} (check --host and --port)") from None


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401  (python-multipart: FastAPI's form parser)
        import uvicorn
    except ImportError as err:
        raise UserError(f"serving needs fastapi, uvicorn and python-multipart ({err.name} is missing): "
                        'pip install -e ".[serve]"') from None
    from .multi import MultiAdapterModel

    if args.max_batch < 1 or args.max_wait_ms < 0:
        raise UserError("--max-batch must be >= 1 and --max-wait-ms >= 0")
    adapters = parse_adapters(args.adapter)
    check_listen(args.host, args.port)  # before the model: loading takes a while, a taken port is instant
    model = MultiAdapterModel(args.base, adapters, args.device, args.precision)
    app = create_app(model, args.max_batch, args.max_wait_ms, args.allow_admin, args.max_bytes, args.max_pixels)
    print(f"serving {', '.join(model.adapters)} on http://{args.host}:{args.port} (API docs at /docs)",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def add_command(subparsers) -> None:
    from .cli import add_inference_flags

    p = subparsers.add_parser("serve", help="HTTP server: one base model, many adapters, micro-batched")
    p.add_argument("--base", required=True, help="base model (hub id or directory) the adapters were trained on")
    p.add_argument("--adapter", action="append", required=True, metavar="NAME=OUTPUT_DIR",
                   help="an adapter run to serve under NAME; repeat for more")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_number, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="most images per model call")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill")
    p.add_argument("--allow-admin", action="store_true", help="allow POST/DELETE /v1/adapters/NAME")
    p.add_argument("--max-bytes", type=int, default=MAX_BYTES, help="largest accepted upload")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="largest accepted image (width x height)")
    add_inference_flags(p)
    p.add_argument("--log-level", default="warning", help="uvicorn log level")
    p.set_defaults(func=cmd_serve)
