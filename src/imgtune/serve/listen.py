"""The address check made before the model loads: a taken port is a one-line error at once."""

from __future__ import annotations

import errno
import socket

from imgtune.errors import UserError


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
                    raise UserError(
                        f"cannot listen on {where}: permission denied (ports below 1024 need root: pick another --port)"
                    ) from None
                raise UserError(f"cannot listen on {where}: {err.strerror or err} (check --host and --port)") from None
