"""``imgtune serve``: one base model, many adapters, over HTTP."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imgtune.cli.common import add_inference_flags
from imgtune.errors import UserError
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
        required=True,
        metavar="NAME=OUTPUT_DIR",
        help="an adapter run to serve under NAME; repeat for more",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=port_number, default=8000, help="port to listen on")
    p.add_argument("--max-batch", type=int, default=32, help="most images per model call")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill")
    p.add_argument("--allow-admin", action="store_true", help="allow POST/DELETE /v1/adapters/NAME")
    p.add_argument("--max-bytes", type=int, default=MAX_BYTES, help="largest accepted upload")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="largest accepted image (width x height)")
    add_inference_flags(p)
    p.add_argument("--log-level", default="warning", help="uvicorn log level")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401  (python-multipart: FastAPI's form parser)
        import uvicorn
    except ImportError as err:
        raise UserError(
            f'serving needs fastapi, uvicorn and python-multipart ({err.name} is missing): pip install -e ".[serve]"'
        ) from None
    if args.max_batch < 1 or args.max_wait_ms < 0:
        raise UserError("--max-batch must be >= 1 and --max-wait-ms >= 0")
    from imgtune.serve.app import create_app
    from imgtune.serve.engine import MultiAdapterModel
    from imgtune.serve.listen import check_listen

    adapters = parse_adapters(args.adapter)
    check_listen(args.host, args.port)  # before the model: loading takes a while, a taken port is instant
    model = MultiAdapterModel(args.base, adapters, args.device, args.precision)
    app = create_app(model, args.max_batch, args.max_wait_ms, args.allow_admin, args.max_bytes, args.max_pixels)
    print(
        f"serving {', '.join(model.adapters)} on http://{args.host}:{args.port} (API docs at /docs)",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
