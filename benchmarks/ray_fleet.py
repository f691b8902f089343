"""The Ray Serve side of the many-adapters benchmark (issue 16): start imgtune's Ray app, get its URL.

Meant to be wired into ``benchmarks/many_adapters.py --ray --replicas 2`` as one more system: ``start_ray``
returns a ``RayFleet`` with the attributes that file's ``Server`` has (system, url, pids, procs, log,
start_seconds, rss(), stop(), tail()), so its load generator, answer checks and /metrics scrape (the Ray
app's /metrics sums to the same names: imgtune_adapter_hits_total, ..._misses_total, ..._evictions_total;
/healthz gives batches and images) work on it unchanged. Two routings:

- ``routing="adapter"``: the adapter is Ray's multiplexed model id, so Ray's router sends a request to a
  replica that holds its adapter (what ``imgtune serve --ray`` does);
- ``routing="random"``: Ray's routing with the multiplexed id left out (power of two choices on queue
  length): the baseline that shows what the routing buys in hit ratio, and through cold loads, in p99.

On 2 shared cores the point is the hit ratio and its effect on p99, not absolute throughput: two replicas
split the same two cores, and Ray's proxy, ingress and controller take their share of them.

Each fleet runs in a process of its own session (``python benchmarks/ray_fleet.py --serve SPEC``) that starts a
local Ray (``num_cpus``, no dashboard) and the app through the Python API (``imgtune.serve.ray_app``); stopping
it deletes the app and ends that Ray, and the process group is killed if anything lingers. ``stop`` returns
the processes of the fleet still alive afterwards (none, when all went well); ``stop_all`` stops every fleet
this process started and has not stopped (for a caller's ``finally``).

    PYTHONPATH=src python benchmarks/ray_fleet.py --try BASE ADAPTER_DIR IMAGE   # both routings, a short Zipf run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROUTINGS = ("adapter", "random")
REPORT_LAG = 2.5  # seconds: replicas report their counters every second (imgtune.serve.ray.metrics), then /metrics
REPLICA_TITLE = "ImgtuneReplica"  # in the process title Ray gives a replica's actor (ray::ServeReplica:...)
STARTED: list[RayFleet] = []  # fleets started and not stopped yet


@dataclass
class RayFleet:
    system: str
    url: str
    procs: list[subprocess.Popen]
    log: Path
    start_seconds: float = 0.0
    replicas: int = 2
    extra: dict = field(default_factory=dict)
    report_lag: float = REPORT_LAG  # how long /metrics lags behind the replicas' counters

    @property
    def pids(self) -> list[int]:
        """The driver and every process of its local Ray (replicas included; read now: Ray restarts them)."""
        import psutil

        root = psutil.Process(self.procs[0].pid)
        return [root.pid, *(p.pid for p in root.children(recursive=True))]

    def rss(self) -> int:
        import psutil

        total = 0
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                total += psutil.Process(pid).memory_info().rss
        return total

    def replica_rss(self) -> int:
        """The replicas' processes alone (what one `imgtune serve` process is to each of them)."""
        import psutil

        total = 0
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if any(REPLICA_TITLE in part for part in proc.cmdline()):
                    total += proc.memory_info().rss
        return total

    def stop(self, timeout: float = 60) -> list[str]:
        """SIGTERM to the driver alone (it deletes the app and stops its Ray: a signal to the whole group would
        kill Ray's agents under it first), then SIGKILL to whatever of its session is left. Returns the
        processes of the fleet (read just before stopping it) still alive 5 s later, as "PID NAME"."""
        import psutil

        proc = self.procs[0]
        if self in STARTED:
            STARTED.remove(self)
        before = []
        with contextlib.suppress(psutil.Error):
            for pid in self.pids:
                with contextlib.suppress(psutil.Error):
                    before.append(psutil.Process(pid))
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        _, alive = psutil.wait_procs(before, timeout=5)
        left = []
        for p in alive:
            with contextlib.suppress(psutil.Error):
                if p.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{p.pid} {p.name()}")
        return left

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def start_ray(
    work: Path,
    base: Path,
    adapter_dir: Path,
    cap: int | None = None,
    replicas: int = 2,
    routing: str = "adapter",
    num_cpus: int = 2,
    max_decodes: int = 2,
    timeout: float = 600,
) -> RayFleet:
    """A local Ray with imgtune's app on it (CPU, fp32), ready to answer; ``cap``: --max-resident per replica."""
    import httpx

    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}")
    port = free_port()
    spec = work / f"ray-{routing}-{replicas}-{port}.json"
    spec.write_text(json.dumps({
        "base": str(base), "adapter_dir": str(adapter_dir), "cap": cap, "replicas": replicas, "routing": routing,
        "num_cpus": num_cpus, "max_decodes": max_decodes, "port": port,
    }))  # fmt: skip
    log = spec.with_suffix(".log")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, __file__, "--serve", str(spec)], stdout=out, stderr=subprocess.STDOUT,
                                env={**env, "PYTHONUNBUFFERED": "1"}, start_new_session=True)  # fmt: skip
    fleet = RayFleet(f"R-{routing}", f"http://127.0.0.1:{port}", [proc], log, replicas=replicas)
    STARTED.append(fleet)
    started, deadline = time.perf_counter(), time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{fleet.url}/readyz", timeout=5).status_code == 200:
                fleet.start_seconds = time.perf_counter() - started
                return fleet
        if proc.poll() is not None or time.monotonic() > deadline:
            fleet.stop()
            raise RuntimeError(f"the Ray fleet did not start:\n{fleet.tail()}")
        time.sleep(0.5)


def stop_all() -> list[str]:
    """Stop every fleet started here and not stopped yet; the processes left, as ``RayFleet.stop`` says."""
    left = []
    for fleet in list(STARTED):
        left += fleet.stop()
    return left


def serve_spec(spec_path: str) -> None:
    """The fleet's own process: a local Ray and the app, until SIGTERM."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from imgtune.serve import ray_app
    from imgtune.serve.limits import RequestLimits
    from imgtune.serve.ray.application import run_foreground

    spec = json.loads(Path(spec_path).read_text())
    app = ray_app(
        spec["base"], spec["adapter_dir"], max_resident=spec["cap"], replicas=spec["replicas"],
        replica_cpus=spec["num_cpus"] / spec["replicas"], device="cpu", precision="fp32", max_batch=32,
        max_wait_ms=5, request_limits=RequestLimits(max_decodes=spec["max_decodes"]),
        route_by_adapter=spec["routing"] == "adapter",
    )  # fmt: skip
    announce = lambda: print(f"serving on http://127.0.0.1:{spec['port']}", flush=True)  # noqa: E731
    run_foreground(app, None, "127.0.0.1", spec["port"], announce, num_cpus=spec["num_cpus"], include_dashboard=False)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hit_ratio(url: str) -> tuple[float, int]:
    """(hits / (hits + misses), evictions) over every replica, from the app's /metrics."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    hits, misses = sums.get("imgtune_adapter_hits_total", 0), sums.get("imgtune_adapter_misses_total", 0)
    return hits / max(1.0, hits + misses), int(sums.get("imgtune_adapter_evictions_total", 0))


def try_both(base: Path, adapter_dir: Path, image_path: Path, cap: int, requests: int) -> None:
    """A short look: the same Zipf request sequence against each routing, one client."""
    import tempfile

    import httpx

    names = sorted(p.name for p in adapter_dir.iterdir() if (p / "adapter_config.json").is_file())
    image = image_path.read_bytes()
    weights = [1 / (rank + 1) for rank in range(len(names))]
    sequence = random.Random(0).choices(names, weights, k=requests)
    with tempfile.TemporaryDirectory() as work:
        for routing in ROUTINGS:
            fleet = start_ray(Path(work), base, adapter_dir, cap=cap, routing=routing)
            try:
                times = []
                with httpx.Client(timeout=120) as client:
                    for name in sequence:
                        t0 = time.perf_counter()
                        r = client.post(f"{fleet.url}/v1/classify", params={"adapter": name}, content=image)
                        r.raise_for_status()
                        times.append(time.perf_counter() - t0)
                time.sleep(2.5)  # the replicas report every second
                ratio, evictions = hit_ratio(fleet.url)
                times.sort()
                p50, p99 = times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000
                print(f"{routing:8s} hit ratio {ratio:.2f}  evictions {evictions}  p50 {p50:.0f} ms  p99 {p99:.0f} ms")
            finally:
                fleet.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", metavar="SPEC", help=argparse.SUPPRESS)
    parser.add_argument("--try", dest="try_", nargs=3, metavar=("BASE", "ADAPTER_DIR", "IMAGE"))
    parser.add_argument("--cap", type=int, default=2, help="--max-resident per replica")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    if args.serve:
        serve_spec(args.serve)
    elif args.try_:
        try_both(*map(Path, args.try_), args.cap, args.requests)
    else:
        parser.print_help()


if __name__ == "__main__":
    main()
