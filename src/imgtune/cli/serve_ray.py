"""``imgtune serve --ray``: the same HTTP API as a Ray Serve application, one engine per replica."""

from __future__ import annotations

import argparse
import sys

from imgtune.errors import UserError


def add_flags(p) -> None:
    group = p.add_argument_group('Ray Serve (pip install "imgtune[ray]")')
    group.add_argument(
        "--ray",
        action="store_true",
        help="serve as a Ray Serve application: replicas of the engine, requests routed to a replica that "
        "holds their adapter (--max-resident is per replica)",
    )
    group.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="join this running Ray cluster (HOST:PORT of its head, or auto); default: start a local one",
    )
    group.add_argument(
        "--replicas", default="1", metavar="N|MIN:MAX", help="replicas of the engine, or autoscaling bounds"
    )
    group.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs Ray reserves for each replica")
    group.add_argument(
        "--replica-gpus",
        type=float,
        default=0.0,
        help="GPUs for each replica (a fraction shares one; default: 0, none)",
    )


def run(args: argparse.Namespace, adapters: list[tuple[str, str]], preload: list[str], limits) -> int:
    """Called by ``imgtune serve`` once it has checked the flags both modes share."""
    refused = [flag for flag, given in (
        ("--allow-admin", args.allow_admin),
        ("--max-resident-bytes", getattr(args, "max_resident_bytes", None) is not None),
    ) if given]  # fmt: skip
    if refused:
        raise UserError(f"{', '.join(refused)} cannot be used with --ray (each replica keeps its own adapters)")
    if (args.device or "").startswith("cuda") and args.replica_gpus <= 0:
        raise UserError(f"--device {args.device} needs --replica-gpus (Ray gives a replica no GPU otherwise)")
    if args.ray_address is None:  # the local cluster's proxy binds it: a taken port is one line, now
        from imgtune.serve.listen import check_listen

        check_listen(args.host, args.port)
    from imgtune.serve import _ray_application

    application = _ray_application()
    app = application.ray_app(
        args.base, args.adapter_dir, adapters=dict(adapters), max_resident=args.max_resident,
        replicas=args.replicas, replica_cpus=args.replica_cpus, replica_gpus=args.replica_gpus,
        preload=preload, device=args.device, precision=args.precision, max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms, max_bytes=args.max_bytes, max_pixels=args.max_pixels, request_limits=limits,
        log_level=args.log_level,
    )  # fmt: skip

    def announce() -> None:
        print(
            f"serving on http://{args.host}:{args.port} as Ray Serve app 'imgtune' ({args.replicas} replica(s); "
            "API docs at /docs)",
            file=sys.stderr,
            flush=True,
        )

    application.run_foreground(app, args.ray_address, args.host, args.port, announce)
    return 0
