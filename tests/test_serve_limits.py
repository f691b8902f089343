"""Hostile input against a real server on a loopback port: shapes that cost memory, uploads that never
finish, a full queue, SIGTERM with a stalled client. Small limits keep it quick."""

from __future__ import annotations

import asyncio
import io
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from conftest import start_server as start_imgtune_serve
from imgtune.data.decode import TooLarge, decode_cost, decode_rgb

DECODE_BUDGET = 20_000_000  # --max-decode-bytes of the test server: the bound its peak memory is checked against
READ_TIMEOUT = 2.0


def start_server(tiny_vit: Path, lora_run: Path, log: Path, *flags: str) -> tuple[subprocess.Popen, str, int]:
    return start_imgtune_serve(["--base", tiny_vit, f"--adapter=a={lora_run}", *flags], log)


@pytest.fixture(scope="module")
def server(tiny_vit, lora_run, tmp_path_factory):
    log = tmp_path_factory.mktemp("limits-log") / "server.log"
    flags = ["--max-pixels", "1000000", "--max-decode-bytes", str(DECODE_BUDGET), "--max-decodes", "2"]
    flags += ["--read-timeout", str(READ_TIMEOUT), "--request-timeout", "20", "--shutdown-timeout", "2"]
    proc, url, port = start_server(tiny_vit, lora_run, log, *flags)
    yield proc, url, port
    proc.terminate()
    proc.wait(timeout=30)


def png(size, mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def png_colour(size, colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds almost nothing: what a decompression bomb's header says."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def peak_rss(pid: int) -> int:
    """The process's peak resident size (VmHWM): a transient allocation shows here after it is freed."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return psutil.Process(pid).memory_info().rss


def classify(url: str, data: bytes, **kw) -> httpx.Response:
    return httpx.post(f"{url}/v1/classify", content=data, headers={"content-type": "image/png"}, timeout=30, **kw)


def test_decode_budget_is_checked_from_the_header_before_decoding():
    # a header that declares 5000x5000 and holds 16 bytes of pixels: only a header check can refuse it cheaply
    bomb = png_header_only(5000, 5000)
    cost = decode_cost(5000, 5000, "RGB")
    with pytest.raises(TooLarge, match=f"would take {cost:,} bytes to decode, over the 1,000,000-byte limit"):
        decode_rgb(bomb, max_bytes=1_000_000)
    # the resize of the shorter side to the model size is part of the cost, and the aspect ratio is refused
    strip = png((4000, 1))
    assert len(strip) < 500 and decode_cost(4000, 1, "RGB", 224) > 3 * 224 * 224 * 4000
    with pytest.raises(TooLarge, match="aspect ratio over the 20:1 limit"):
        decode_rgb(strip, min_side=224)
    with pytest.raises(TooLarge, match="over the 100,000,000-byte limit"):
        decode_rgb(strip, min_side=224, max_aspect=1e9, max_bytes=100_000_000)
    assert decode_rgb(strip, max_aspect=1e9).size == (4000, 1)  # no resize, no cost beyond the pixels
    # alpha costs more than RGB (compositing on white), 16-bit greyscale more than 8-bit
    assert decode_cost(100, 100, "RGBA") > decode_cost(100, 100, "RGB") > decode_cost(100, 100, "L")
    assert decode_cost(100, 100, "I;16") > decode_cost(100, 100, "L")
    # an ordinary photo passes the defaults, and so does a 20:1 panorama
    assert decode_rgb(png((600, 400)), min_side=224).size == (600, 400)
    assert decode_rgb(png((400, 20)), min_side=224).size == (400, 20)


def test_extreme_aspect_strip_is_413_without_raising_peak_memory(server):
    proc, url, _ = server
    assert classify(url, png((40, 40))).status_code == 200  # warm: the first request's own allocations
    before = peak_rss(proc.pid)
    strip = png((100_000, 1))  # unchecked, the resize to 32 px would take 3 * 32 * 32 * 100000 = 307 MB
    assert len(strip) < 1000
    for _ in range(3):
        r = classify(url, strip)
        assert r.status_code == 413 and "aspect ratio" in r.json()["detail"], r.text
    assert peak_rss(proc.pid) - before < DECODE_BUDGET
    # 1 megapixel RGBA, at the pixel limit but over the budget (30 MB): refused from the header
    r = classify(url, png((1000, 1000), "RGBA"))
    assert r.status_code == 413 and "bytes to decode" in r.json()["detail"], r.text
    assert peak_rss(proc.pid) - before < DECODE_BUDGET
    assert classify(url, png((40, 40))).status_code == 200


def test_decompression_bomb_header_is_413(server):
    _, url, _ = server
    r = classify(url, png_header_only(30_000, 30_000))
    assert r.status_code == 413 and "limit" in r.json()["detail"], r.text
    assert classify(url, png((40, 40))).status_code == 200


def stalled_upload(port: int) -> socket.socket:
    """Declares a 1 MB body, sends 10 bytes of it, then waits."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = "POST /v1/classify?adapter=a HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
    head += f"Content-Length: {10**6}\r\n\r\n"
    sock.sendall(head.encode() + b"\x89PNG\r\n\x1a\n\0\0")
    return sock


def test_slow_upload_gets_408_and_others_are_served_meanwhile(server):
    _, url, port = server
    start = time.monotonic()
    with stalled_upload(port) as sock:
        assert classify(url, png((40, 40))).status_code == 200  # served while the upload stalls
        sock.settimeout(READ_TIMEOUT + 10)
        reply = sock.recv(4096)
    took = time.monotonic() - start
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert READ_TIMEOUT - 0.5 <= took <= READ_TIMEOUT + 5, took
    assert classify(url, png((40, 40))).status_code == 200


def test_full_queue_is_503_with_retry_after(tiny_vit, lora_run):
    """In process: the model is held in its first batch, one request waits in a queue of one, the third is 503."""
    import torch
    from fastapi.testclient import TestClient

    from imgtune.serve.app import create_app
    from imgtune.serve.engine import MultiAdapterModel
    from imgtune.serve.limits import RequestLimits

    model = MultiAdapterModel(str(tiny_vit), [("a", lora_run)], device="cpu", precision="fp32")
    entered, release, real = threading.Event(), threading.Event(), model.probabilities
    image = png_colour((40, 40), (10, 200, 30))
    ours = model.preprocess("a", image)

    def held(names, pixels):  # only for this test's requests: the server may run its own forwards (readiness)
        if torch.equal(pixels[0], ours):
            entered.set()
            release.wait(30)
        return real(names, pixels)

    model.probabilities = held
    app = create_app(model, max_batch=1, max_wait_ms=0, request_limits=RequestLimits(max_queue=1))
    with TestClient(app) as client, ThreadPoolExecutor(2) as pool:

        def post():
            return client.post("/v1/classify", content=image, headers={"content-type": "image/png"})

        first = pool.submit(post)
        assert entered.wait(30)
        second = pool.submit(post)
        deadline = time.monotonic() + 30
        while app.state.batcher.queue.qsize() < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        busy = post()
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1", busy.text
        release.set()
        assert first.result().status_code == 200 and second.result().status_code == 200


def test_batcher_queue_is_bounded_in_process():
    from imgtune.serve.batcher import Batcher, QueueFull

    async def main():
        batcher = Batcher(model=None, max_queue=2)  # no worker: nothing leaves the queue
        waiting = [asyncio.ensure_future(batcher.submit("a", i)) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.submit("a", 2)
        for w in waiting:
            w.cancel()
        batcher.executor.shutdown()

    asyncio.run(main())


def test_sigterm_with_a_stalled_client_exits_within_the_graceful_timeout(tiny_vit, lora_run, tmp_path):
    flags = ["--read-timeout", "120", "--request-timeout", "120", "--shutdown-timeout", "2"]
    proc, url, port = start_server(tiny_vit, lora_run, tmp_path / "server.log", *flags)
    try:
        with stalled_upload(port):
            time.sleep(0.5)  # the request is in the endpoint, reading
            start = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
            assert time.monotonic() - start < 2 + 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_decoding_cost_bounds_what_decoding_allocates():
    """decode_cost is an upper bound: the bytes actually touched decoding an RGBA image stay under it."""
    rgba = np.random.default_rng(0).integers(0, 255, (1500, 1500, 4), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", compress_level=0)
    script = (
        "import sys, psutil; from imgtune.data.decode import decode_rgb; from imgtune.data.samples import hwc_tensor;"
        "from imgtune.data.transforms import EvalCrop; data = sys.stdin.buffer.read();"
        "open('/proc/self/clear_refs', 'w').write('5');"  # peak := now: imports may have peaked higher
        "a = psutil.Process().memory_info().rss;"
        "EvalCrop(224)(hwc_tensor(decode_rgb(data, 224)));"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0];"
        "print(int(hwm.split()[1]) * 1024 - a)"
    )
    done = subprocess.run([sys.executable, "-c", script], input=buf.getvalue(), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert 20_000_000 < int(done.stdout) <= decode_cost(1500, 1500, "RGBA", 224), int(done.stdout)  # 2.25 Mpx RGBA
