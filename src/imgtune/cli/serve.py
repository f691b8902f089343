"""``imgtune serve``: one base model, many adapters, over HTTP."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from imgtune.cli import serve_ray
from imgtune.cli.common import add_inference_flags
from imgtune.errors import UserError
from imgtune.serve import limits as L
from imgtune.serve.limits import MAX_BYTES, MAX_PIXELS


def port_number(value: str) -> int:
    """argparse type for --port: an out-of-range port would otherwise end in an OverflowError traceback."""
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (0..65535)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0..65535)")
    return port


def byte_count(value: str) -> int:
    """argparse type for sizes: a number of bytes, or with a K/M/G suffix (powers of 1024)."""
    text = value.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    try:
        size = int(float(number) * scale)
    except (ValueError, OverflowError):  # "inf" parses as a float
        raise argparse.ArgumentTypeError(f"{value!r} is not a size (bytes, or a number with K, M or G)") from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: a size must be at least 1 byte")
    return size


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


def shown_names(names: list[str], most: int = 8) -> str:
    # an --adapter-dir may hold hundreds: the start line names a few and counts the rest
    return ", ".join(names) if len(names) <= most else f"{', '.join(names[:most])} and {len(names) - most} more"


EXAMPLES = (
    "imgtune serve --base ./my-vit --adapter food=runs/food --adapter birds=runs/birds",
    'curl -F file=@cat.jpg "http://127.0.0.1:8000/v1/classify?adapter=food"',
)


def add_command(subparsers) -> None:
    p = subparsers.add_parser("serve", help="HTTP server: one base model, many adapters, micro-batched")
    p.add_argument("--base", required=True, help="base model (hub id or directory) the adapters were trained on")
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=OUTPUT_DIR",
        help="an adapter run to serve under NAME; repeat for more (needed unless --adapter-dir is given)",
    )
    p.add_argument(
        "--adapter-dir",
        metavar="DIR",
        help="serve every adapter run directly under DIR, named after its folder, loaded on first use "
        "(POST /v1/rescan finds new ones)",
    )
    p.add_argument(
        "--max-resident",
        type=int,
        metavar="N",
        help="most adapters on the model at once; the least recently used is unloaded (default: no limit)",
    )
    p.add_argument(
        "--max-resident-bytes",
        type=byte_count,
        metavar="SIZE",
        help="most bytes of adapter weights on the model at once (e.g. 512M, 2G); least recently used unloaded first",
    )
    p.add_argument("--preload", default="", metavar="NAME,...", help="adapters to load at start, not on first use")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=port_number, default=8000, help="port to listen on")
    p.add_argument("--max-batch", type=int, default=32, help="most images per model call")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill")
    add_admin_flags(p)
    p.add_argument("--max-bytes", type=int, default=MAX_BYTES, help="largest accepted upload")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="largest accepted image (width x height)")
    add_limit_flags(p)
    add_inference_flags(p)
    serve_ray.add_flags(p)
    p.add_argument("--log-level", default="warning", help="uvicorn log level")
    p.set_defaults(func=run)


def add_admin_flags(p) -> None:
    p.add_argument(
        "--allow-admin", action="store_true", help="allow POST/DELETE /v1/adapters/NAME (needs --admin-token)"
    )
    p.add_argument(
        "--admin-token",
        metavar="TOKEN",
        help="bearer token admin calls must send; prefer the IMGTUNE_ADMIN_TOKEN variable (a flag shows in ps)",
    )
    p.add_argument(
        "--adapter-root", metavar="DIR", help="admin may add adapters only from under DIR (default: --adapter-dir)"
    )


def admin_options(args: argparse.Namespace) -> tuple[str | None, Path | None]:
    """(token, adapter root), checked before the model loads: admin without a token is refused."""
    # read here, not as the flag's default: --help shows defaults
    token = args.admin_token or os.environ.get("IMGTUNE_ADMIN_TOKEN") or None
    if args.allow_admin and not token:
        raise UserError(
            "--allow-admin needs --admin-token TOKEN (or IMGTUNE_ADMIN_TOKEN): admin calls are authenticated"
        )
    root = args.adapter_root or getattr(args, "adapter_dir", None)
    if root is not None and not Path(root).expanduser().is_dir():
        raise UserError(f"--adapter-root {root} is not a directory")
    return token, Path(root).expanduser().resolve() if root is not None else None


def access_logging(level: str) -> None:
    """imgtune's access log (adapter, status, latency) replaces uvicorn's; shown from --log-level info."""
    shown = level.lower() in ("info", "debug", "trace")
    logging.getLogger("imgtune.serve.access").setLevel(logging.INFO if shown else logging.WARNING)


def add_limit_flags(p) -> None:
    """What one request may cost in memory and time (imgtune.serve.limits says why each default)."""
    p.add_argument(
        "--max-decode-bytes",
        type=int,
        default=L.MAX_DECODE_BYTES,
        help="most memory one image may take to decode and resize, computed from its header (default: %(default)s)",
    )
    p.add_argument("--max-aspect", type=float, default=L.MAX_ASPECT, help="longest accepted longer/shorter side ratio")
    p.add_argument("--max-decodes", type=int, default=L.MAX_DECODES, help="images decoded at once (default: cores)")
    p.add_argument("--max-queue", type=int, default=L.MAX_QUEUE, help="images waiting for the model; beyond, 503")
    p.add_argument("--read-timeout", type=float, default=L.READ_TIMEOUT, help="seconds to receive a body; then 408")
    p.add_argument("--request-timeout", type=float, default=L.REQUEST_TIMEOUT, help="seconds to answer; then 504")
    p.add_argument(
        "--shutdown-timeout", type=int, default=L.SHUTDOWN_TIMEOUT, help="seconds SIGTERM waits for open requests"
    )


def request_limits(args: argparse.Namespace) -> L.RequestLimits:
    numbers = dict(
        max_decode_bytes=args.max_decode_bytes,
        max_decodes=args.max_decodes,
        max_queue=args.max_queue,
        read_timeout=args.read_timeout,
        request_timeout=args.request_timeout,
    )
    bad = [name for name, value in numbers.items() if not value > 0]
    if bad or not args.max_aspect >= 1 or args.shutdown_timeout < 0:
        raise UserError(
            "--max-decode-bytes, --max-decodes, --max-queue, --read-timeout and --request-timeout must be > 0, "
            "--max-aspect >= 1 and --shutdown-timeout >= 0"
        )
    return L.RequestLimits(max_aspect=args.max_aspect, **numbers)


def run(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401  (python-multipart: FastAPI's form parser)
        import prometheus_client  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise UserError(
            "serving needs fastapi, uvicorn, python-multipart and prometheus-client "
            f'({err.name} is missing): pip install -e ".[serve]"'
        ) from None
    if args.max_batch < 1 or args.max_wait_ms < 0:
        raise UserError("--max-batch must be >= 1 and --max-wait-ms >= 0")
    from imgtune.serve.app import create_app
    from imgtune.serve.engine import MultiAdapterModel
    from imgtune.serve.listen import check_listen

    limits = request_limits(args)
    token, root = admin_options(args)
    adapters = parse_adapters(args.adapter)
    if not adapters and not args.adapter_dir:
        raise UserError("give at least one --adapter NAME=OUTPUT_DIR, or --adapter-dir DIR")
    if args.max_resident is not None and args.max_resident < 1:
        raise UserError("--max-resident must be at least 1")
    preload = [n.strip() for n in args.preload.split(",") if n.strip()]
    if args.ray:  # replicas of the engine on Ray Serve instead of this process
        return serve_ray.run(args, adapters, preload, limits)
    check_listen(args.host, args.port)  # before the model: loading takes a while, a taken port is instant
    model = MultiAdapterModel(
        args.base, adapters, args.device, args.precision,
        [args.adapter_dir] if args.adapter_dir else [], args.max_resident, preload, args.max_resident_bytes,
    )  # fmt: skip
    app = create_app(
        model, args.max_batch, args.max_wait_ms, args.allow_admin, args.max_bytes, args.max_pixels, limits,
        admin_token=token, adapter_root=root,
    )  # fmt: skip
    access_logging(args.log_level)
    print(
        f"serving {shown_names(list(model.adapters))} on http://{args.host}:{args.port} (API docs at /docs)",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,  # imgtune.serve.access logs each request, with its adapter and latency
        timeout_graceful_shutdown=args.shutdown_timeout,  # else a stalled client keeps SIGTERM from finishing
    )
    return 0
