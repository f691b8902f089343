"""`imgtune serve --ray`: the HTTP API as a Ray Serve application, adapters as multiplexed model ids.

One local Ray (2 CPUs, loopback, no dashboard) and one app (two replicas, two resident adapters each, five
adapters) are shared by the checks below, in order: answers, routing, evictions, a killed replica, shutdown.
The pieces that need no cluster (the pool following Ray's evictions, the Serve config arguments) are
tested first, on their own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import free_port
from imgtune.errors import UserError
from imgtune.rundir import ADAPTER_WEIGHTS
from imgtune.serve.pool import ResidentPool

pytest.importorskip("ray.serve", reason="imgtune serve --ray needs Ray Serve: pip install 'imgtune[ray]'")
psutil = pytest.importorskip("psutil", reason="comes with ray: finds the processes Ray started")

from imgtune.serve.ray.settings import from_args  # noqa: E402 - Ray is there
from imgtune.serve.ray.sync import MultiplexSync  # noqa: E402

NAMES = [f"r{i}" for i in range(5)]
HEADER = "X-Imgtune-Replica"


# --- without a cluster ------------------------------------------------------------------


def test_ray_evictions_leave_the_pool_when_no_request_holds_the_adapter():
    loaded, unloaded = [], []
    pool = ResidentPool(lambda n: loaded.append(n), unloaded.append)  # no cap: Ray's LRU is the cap
    sync = MultiplexSync(pool)
    for name in ("a", "b"):
        pool.request(name, count=False).result()
    handles = {n: sync.handle(n) for n in ("a", "b")}
    with pool.pinned(["a"]):
        handles["a"].__del__()  # what Ray's multiplexer calls when it evicts "a" (on a worker thread)
        assert pool.is_resident("a") and pool.evictions == 0  # a request holds it: it waits
    sync.settle()  # the request is answered
    pool.loader.submit(lambda: None).result()
    assert list(pool.resident) == ["b"] and unloaded == ["a"] and pool.evictions == 1
    handles["b"].__del__()  # the last adapter stays until its successor is on the model (peft needs one)
    assert list(pool.resident) == ["b"]
    sync.handle("c")
    pool.request("c", count=False).result()
    sync.settle()
    pool.loader.submit(lambda: None).result()
    assert list(pool.resident) == ["c"] and unloaded == ["a", "b"] and pool.evictions == 2
    # an eviction called off: Ray wanted the adapter back before its requests were answered
    pool.request("d", count=False).result()
    with pool.pinned(["d"]):
        sync.handle("d").__del__()
        sync.handle("d")
    sync.settle()
    assert pool.is_resident("d")
    assert sync.count_lookup("d") and not sync.count_lookup("zzz") and (pool.hits, pool.misses) == (1, 1)
    del handles  # garbage collection calls no eviction: Ray's call is an instance attribute
    assert pool.evictions == 2
    pool.close()
    with pytest.raises(ValueError, match="no cap"):
        MultiplexSync(ResidentPool(lambda n: None, lambda n: None, max_resident=2))


def test_serve_config_arguments_become_settings(tmp_path):
    settings, scaling = from_args(
        {"base": "vit", "adapter_dir": str(tmp_path), "max_resident": "4", "replicas": "1:3", "replica_gpus": "0.5",
         "preload": "a,b", "adapters": {"x": "/runs/x"}, "request_timeout": "9", "route_by_adapter": "false",
         "log_level": "info"}
    )  # fmt: skip
    assert settings.adapter_dirs == (str(tmp_path),) and settings.max_resident == 4
    assert settings.preload == ("a", "b") and settings.adapters == (("x", "/runs/x"),)
    assert settings.request_limits.request_timeout == 9.0 and settings.route_by_adapter is False
    assert (scaling.replicas, scaling.max_replicas, scaling.replica_gpus) == (1, 3, 0.5)
    options = scaling.replica_options(settings)
    assert "autoscaling_config" in options and options["logging_config"]["enable_access_log"]
    with pytest.raises(UserError, match="unknown ray_app argument.*max_residents"):
        from_args({"base": "vit", "max_residents": 2})
    with pytest.raises(UserError, match="max_resident='two'"):
        from_args({"base": "vit", "max_resident": "two"})
    assert from_args({"base": "vit", "adapters": "a=/r/a,b=/r/b"})[0].adapters == (("a", "/r/a"), ("b", "/r/b"))
    # `import imgtune.serve` stays light: Ray is imported when an app is built
    code = "import sys, imgtune.serve; print(sorted({'ray', 'torch'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_a_request_whose_replica_died_is_sent_again():
    import asyncio
    from types import SimpleNamespace

    from fastapi import HTTPException
    from ray.exceptions import ActorDiedError

    from imgtune.serve.ray.ingress import ATTEMPTS, ImgtuneIngress

    class Handle:
        def __init__(self, failures: int):
            self.failures, self.ids = failures, []

        def options(self, multiplexed_model_id):
            self.ids.append(multiplexed_model_id)
            return self

        @property
        def classify(self):
            return SimpleNamespace(remote=self.remote)

        async def remote(self, *args):
            if self.failures:
                self.failures -= 1
                raise ActorDiedError()
            return {"status": 200, "args": args}

    call = ImgtuneIngress.func_or_class.call
    handle = Handle(failures=ATTEMPTS - 1)
    ingress = SimpleNamespace(replica=handle, settings=SimpleNamespace(route_by_adapter=True))
    assert asyncio.run(call(ingress, "classify", "r1", b"x", 3, adapter="r1"))["args"] == ("r1", b"x", 3)
    assert handle.ids == ["r1"]
    ingress.replica = Handle(failures=ATTEMPTS)
    with pytest.raises(HTTPException) as err:
        asyncio.run(call(ingress, "classify", "r1", b"x", 3, adapter="r1"))
    assert err.value.status_code == 503


def test_ray_mode_refuses_what_it_cannot_do(tiny_vit, tmp_path):
    from imgtune.cli.main import build_parser

    for extra, message in (
        (["--allow-admin", "--admin-token", "t"], "--allow-admin cannot be used with --ray"),
        (["--device", "cuda"], "needs --replica-gpus"),
    ):
        args = build_parser().parse_args(["serve", "--ray", "--base", str(tiny_vit), "--adapter-dir", str(tmp_path),
                                          "--port", str(free_port()), *extra])  # fmt: skip
        with pytest.raises(UserError, match=message):
            args.func(args)


# --- one Ray, one app -----------------------------------------------------------------


def perturbed_copy(run: Path, out: Path, seed: int) -> Path:
    """The run with every adapter tensor nudged: another adapter, same shapes, no training needed."""
    shutil.copytree(run, out)
    gen = torch.Generator().manual_seed(seed)
    weights = load_file(out / ADAPTER_WEIGHTS)
    save_file({k: v + 0.2 * torch.randn(v.shape, generator=gen) for k, v in weights.items()}, out / ADAPTER_WEIGHTS)
    return out


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, lora_run) -> Path:
    root = tmp_path_factory.mktemp("ray-adapters")
    for i, name in enumerate(NAMES):
        perturbed_copy(lora_run, root / name, seed=10 + i)
    return root


@pytest.fixture(scope="module")
def images(colour_folder) -> list[Path]:
    return sorted(colour_folder.rglob("*_0.*"))  # one per class


def predict_json(run: Path, images: list[Path]) -> subprocess.Popen:
    """`imgtune predict --json` for one adapter, started now, read later."""
    cmd = [sys.executable, "-m", "imgtune", "predict", str(run), *map(str, images), "--json", "--top-k", "3",
           "--device", "cpu", "--precision", "fp32"]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# The local Ray is owned by a helper process, not by pytest's (ray.init would leave its signal handler,
# excepthook and environment in it): it starts Ray as the issue says, answers "kill REPLICA" (ray.kill on
# that replica's actor) and "quit" (Serve and Ray shut down) on stdin, one JSON line each on stdout.
# The app's HTTP is on 127.0.0.1. Ray's own gRPC servers listen on every interface whatever ray.init is
# told (it turns 127.0.0.1 into the machine's address), guarded by Ray's token auth, on by default.
HEAD = """
import json, os, sys
import ray
temp, metrics_port = sys.argv[1], int(sys.argv[2])
ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False,
         object_store_memory=100 * 1024**2, _metrics_export_port=metrics_port,
         _system_config={"metrics_report_interval_ms": 1000})
auth = {k: v for k, v in os.environ.items() if k.startswith("RAY_AUTH_")}  # Ray's token auth, on by default
print(json.dumps({"address": ray.get_runtime_context().gcs_address, "auth": auth}), flush=True)
for line in sys.stdin:
    command, _, replica = line.strip().partition(" ")
    if command != "kill":
        break
    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith("#" + replica)]
    for a in names:
        ray.kill(ray.get_actor(a["name"], namespace=a["namespace"]), no_restart=True)
    print(json.dumps({"killed": [a["name"] for a in names]}), flush=True)
from ray import serve
serve.shutdown()
ray.shutdown()
print(json.dumps({"stopped": True}), flush=True)
"""


class Fleet:
    def __init__(self, url: str, head: subprocess.Popen, cli: subprocess.Popen, log: Path, expected: dict):
        self.url, self.head, self.cli, self.log, self.expected = url, head, cli, log, expected
        self.client = httpx.Client(base_url=url, timeout=60)
        self.ray_processes: list = []
        self.ray_metrics_url = ""

    def tell_head(self, line: str) -> dict:
        self.head.stdin.write(line + "\n")
        self.head.stdin.flush()
        return json.loads(self.head.stdout.readline())

    def classify(self, name: str, image: Path) -> httpx.Response:
        return self.client.post(f"/v1/classify?adapter={name}&top_k=3", content=image.read_bytes(),
                                headers={"content-type": "application/octet-stream"})  # fmt: skip

    def correct(self, name: str, image: Path, response: httpx.Response) -> bool:
        want = {p["label"]: p["score"] for p in self.expected[name][str(image)]}
        got = response.json()["predictions"]
        return len(got) == len(want) and all(abs(p["score"] - want[p["label"]]) <= 1e-4 for p in got)

    def metrics(self) -> dict[str, float]:
        """Sample name with labels -> value, from the app's /metrics."""
        text = self.client.get("/metrics").text
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"}


def wait_until_ready(url: str, cli: subprocess.Popen, log: Path, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if cli.poll() is not None or time.monotonic() > deadline:
            cli.kill()
            pytest.fail(f"the Ray app did not start:\n{log.read_text()[-5000:]}")
        time.sleep(0.5)


def start_head(temp: str, metrics_port: int) -> tuple[subprocess.Popen, dict]:
    head = subprocess.Popen([sys.executable, "-c", HEAD, temp, str(metrics_port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    line = head.stdout.readline()
    if not line:
        head.kill()
        pytest.fail("the local Ray did not start")
    return head, json.loads(line)


@pytest.fixture(scope="module")
def fleet(tiny_vit, adapter_dir, images, tmp_path_factory):
    predictions = {name: predict_json(adapter_dir / name, images) for name in NAMES}
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    metrics_port, port = free_port(), free_port()
    head, cluster = start_head(temp, metrics_port)
    log = tmp_path_factory.mktemp("ray-log") / "serve.log"
    cmd = [sys.executable, "-m", "imgtune", "serve", "--ray", "--ray-address", cluster["address"], "--base", tiny_vit,
           "--adapter-dir", adapter_dir, "--max-resident", "2", "--replicas", "2", "--replica-cpus", "0.5",
           "--max-wait-ms", "20", "--device", "cpu", "--precision", "fp32", "--port", port]  # fmt: skip
    with open(log, "w") as out:
        cli = subprocess.Popen(list(map(str, cmd)), stdout=out, stderr=subprocess.STDOUT,
                               env={**os.environ, **cluster["auth"], "PYTHONUNBUFFERED": "1"})  # fmt: skip
    fleet = Fleet(f"http://127.0.0.1:{port}", head, cli, log, {})
    try:
        for name, proc in predictions.items():
            stdout, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 0, stderr
            fleet.expected[name] = {r["image"]: r["predictions"] for r in json.loads(stdout)["results"]}
        wait_until_ready(fleet.url, cli, log)
        fleet.ray_metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        fleet.ray_processes = psutil.Process(head.pid).children(recursive=True)  # gcs_server, raylet, workers
        yield fleet
    finally:
        stop(fleet)
        shutil.rmtree(temp, ignore_errors=True)


def stop(fleet: Fleet) -> None:
    """The command deletes its app on SIGTERM; then the helper stops Serve and Ray (idempotent)."""
    if fleet.cli.poll() is None:
        fleet.cli.send_signal(signal.SIGTERM)
        try:
            fleet.cli.wait(timeout=60)
        except subprocess.TimeoutExpired:
            fleet.cli.kill()
    fleet.client.close()
    if fleet.head.poll() is None:
        try:
            fleet.head.communicate("quit\n", timeout=60)
        except subprocess.TimeoutExpired:
            fleet.head.kill()
            fleet.head.wait()


def test_each_adapter_answers_as_imgtune_predict(fleet, images):
    for name in NAMES:
        for image in images:
            r = fleet.classify(name, image)
            assert r.status_code == 200, r.text
            assert r.json()["adapter"] == name and fleet.correct(name, image, r), (name, image, r.text)
            assert r.headers[HEADER]
    for path in ("/", "/docs"):  # the page and the API docs, as `imgtune serve` has them
        page = fleet.client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
    listing = fleet.client.get("/v1/adapters").json()["adapters"]
    assert [a["name"] for a in listing] == NAMES and all({"resident", "loads", "last_error"} <= set(a) for a in listing)
    r = fleet.client.post("/v1/classify?adapter=nope", content=b"x")
    assert r.status_code == 404 and "unknown adapter 'nope'" in r.json()["detail"] and r.headers[HEADER]
    r = fleet.client.post(f"/v1/classify?adapter={NAMES[1]}", content=b"not an image",
                          headers={"content-type": "image/png"})  # fmt: skip
    assert r.status_code == 400 and r.json()["detail"].startswith("cannot read image")


def test_requests_for_one_adapter_go_to_the_replica_that_holds_it(fleet, images):
    time.sleep(1.5)  # replicas report what they hold every second
    replicas = fleet.client.get("/v1/adapters").json()["replicas"]
    assert len(replicas) == 2
    holders = {n: [r for r, s in replicas.items() if n in s["resident"]] for n in NAMES}
    # an adapter on one replica (an earlier burst may have loaded one on both: then both may answer)
    name = next((n for n in NAMES if len(holders[n]) == 1), None) or next(n for n in NAMES if not holders[n])
    first = fleet.classify(name, images[0]).headers[HEADER]
    assert first in holders[name] or not holders[name]
    time.sleep(1)  # a replica tells Ray's router what it loaded within 0.1 s; the router hears it soon after
    seen = {fleet.classify(name, images[i % len(images)]).headers[HEADER] for i in range(8)}
    assert seen == {first}


def test_evictions_happen_and_are_counted(fleet, images):
    for _ in range(2):
        for name in NAMES:  # five adapters over two replicas that hold two each
            r = fleet.classify(name, images[0])
            assert r.status_code == 200 and fleet.correct(name, images[0], r)
    time.sleep(2.5)  # replicas report every second
    metrics = fleet.metrics()
    replicas = {k.split('"')[1] for k in metrics if k.startswith("imgtune_resident_adapters{")}
    assert len(replicas) == 2
    assert sum(metrics[f'imgtune_adapter_evictions_total{{replica="{r}"}}'] for r in replicas) >= 1
    assert all(metrics[f'imgtune_resident_adapters{{replica="{r}"}}'] <= 2 for r in replicas)
    assert sum(metrics[f'imgtune_adapter_misses_total{{replica="{r}"}}'] for r in replicas) >= 5
    listing = fleet.client.get("/v1/adapters").json()
    assert listing["max_resident"] == 2 and all(len(s["resident"]) <= 2 for s in listing["replicas"].values())
    assert metrics['imgtune_requests_total{adapter="r0",status="200"}'] >= 2
    # the same counts through Ray's metrics API, in Ray's Prometheus endpoint (tagged by replica)
    deadline, exported = time.monotonic() + 30, ""
    while "imgtune_adapter_evictions" not in exported and time.monotonic() < deadline:
        time.sleep(1)
        try:
            exported = httpx.get(fleet.ray_metrics_url, timeout=5).text
        except httpx.TransportError:
            pass
    evictions = [line for line in exported.splitlines() if "imgtune_adapter_evictions" in line and line[:1] != "#"]
    assert evictions and sum(float(line.rsplit(" ", 1)[1]) for line in evictions) >= 1, exported[-2000:]
    assert "imgtune_resident_adapters" in exported and "imgtune_adapter_load_seconds" in exported


def test_a_killed_replica_is_replaced_and_no_answer_is_wrong(fleet, images):
    before = set(fleet.client.get("/v1/adapters").json()["replicas"])
    assert len(before) == 2
    results, stop_sending = [], threading.Event()

    def send(offset: int) -> None:
        i = offset
        while not stop_sending.is_set():
            name, image = NAMES[i % len(NAMES)], images[i % len(images)]
            r = fleet.classify(name, image)
            results.append(
                (r.status_code, r.status_code == 200 and fleet.correct(name, image, r), r.headers.get(HEADER))
            )
            i += 1

    senders = [threading.Thread(target=send, args=(k,)) for k in range(2)]
    for t in senders:
        t.start()
    time.sleep(2)
    victim = sorted(before)[0]
    assert fleet.tell_head(f"kill {victim}")["killed"] == [f"SERVE_REPLICA::imgtune#ImgtuneReplica#{victim}"]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not ({r[2] for r in results} - before):
        time.sleep(0.5)
    time.sleep(1)
    stop_sending.set()
    for t in senders:
        t.join(timeout=60)
    statuses = [r[0] for r in results]
    assert all(status == 200 for status in statuses), statuses
    assert all(r[1] for r in results)
    assert {r[2] for r in results} - before, "Ray did not start a replica in place of the killed one"


def test_ray_goes_and_leaves_no_process_behind(fleet):
    names = {safe_name(p) for p in fleet.ray_processes}
    assert {"raylet", "gcs_server"} <= names, names
    stop(fleet)
    assert fleet.cli.returncode == 0, fleet.log.read_text()[-3000:]
    assert fleet.head.returncode == 0
    deadline = time.monotonic() + 30
    while (left := [p for p in fleet.ray_processes if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, [(p.pid, safe_name(p)) for p in left]


def safe_name(process) -> str:
    try:
        return process.name()
    except psutil.Error:
        return "?"


def alive(process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
