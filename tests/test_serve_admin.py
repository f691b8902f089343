"""imgtune serve's admin, health and metrics, on a real server on a loopback port: admin needs a bearer
token and adds adapters only from under the adapter root; /livez, /readyz, /metrics; the access log."""

from __future__ import annotations

import io
import os
import shutil
import time

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port, run_cli, start_server, stop_server

TOKEN = "s3cret-token-for-tests"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def root(tmp_path_factory, lora_run):
    """The adapter root: a good run, a damaged one, and a symlink to a run outside the root."""
    root = tmp_path_factory.mktemp("adapter-root")
    shutil.copytree(lora_run, root / "good")
    shutil.copytree(lora_run, root / "damaged")
    (root / "damaged" / "adapter_config.json").write_text("{not json")
    (root / "empty").mkdir()
    (root / "escape").symlink_to(lora_run, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def server(root, lora_run, tiny_vit, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("admin-log") / "server.log"
    args = ["--base", tiny_vit, "--adapter", f"a={lora_run}", "--allow-admin", "--adapter-root", root]
    # the token from the environment
    proc, url, _ = start_server([*args, "--log-level", "info"], log_path, env={"IMGTUNE_ADMIN_TOKEN": TOKEN})
    yield url, log_path
    stop_server(proc)


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 40, 40)).save(buf, format="PNG")
    return buf.getvalue()


def classify(url: str, adapter: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/classify", params={"adapter": adapter}, content=png(), headers={"content-type": "image/png"}
    )


def request_count(url: str, adapter: str, status: str = "200") -> float:
    text = httpx.get(f"{url}/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == "imgtune_requests":
            for sample in family.samples:
                if sample.name == "imgtune_requests_total" and sample.labels == {"adapter": adapter, "status": status}:
                    return sample.value
    return 0.0


def test_admin_without_a_token_is_refused_at_start(tiny_vit, lora_run):
    env_token = os.environ.pop("IMGTUNE_ADMIN_TOKEN", None)
    try:
        result = run_cli(
            "serve", "--base", tiny_vit, "--adapter", f"a={lora_run}", "--allow-admin", "--port", free_port()
        )
    finally:
        if env_token is not None:
            os.environ["IMGTUNE_ADMIN_TOKEN"] = env_token
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("imgtune: error: --allow-admin needs --admin-token"), lines


def test_admin_needs_the_right_token(server):
    url, _ = server
    wrong = ["Bearer wrong", TOKEN, f"Basic {TOKEN}", b"Bearer \xc3\xa9"]  # the last: not ASCII
    for headers in [{}] + [{"authorization": value} for value in wrong]:
        r = httpx.post(f"{url}/v1/adapters/x", json={"path": "good"}, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert httpx.delete(f"{url}/v1/adapters/a", headers=headers).status_code == 401
    # a body is never read before the token is checked: an oversized one without a token is 401, not 413
    assert httpx.post(f"{url}/v1/adapters/x", content=b"x" * 10_000).status_code == 401


def test_adapters_come_only_from_under_the_root(server, root, lora_run):
    url, _ = server
    refused = {
        str(lora_run): 403,  # absolute, outside
        "../" + root.name + "/../..": 403,  # climbs out
        "escape": 403,  # a symlink inside the root to a run outside it
        "damaged": 400,
        "empty": 400,
        "missing": 400,
    }
    for path, status in refused.items():
        r = httpx.post(f"{url}/v1/adapters/x", json={"path": path}, headers=AUTH)
        assert r.status_code == status, (path, r.status_code, r.text)
        assert "Traceback" not in r.text
    r = httpx.post(f"{url}/v1/adapters/x", json={"path": "damaged"}, headers=AUTH)
    assert "adapter_config.json cannot be read" in r.json()["detail"], r.text
    assert "x" not in httpx.get(f"{url}/v1/adapters").json()["adapters"]
    before = request_count(url, "good")
    r = httpx.post(f"{url}/v1/adapters/good", json={"path": "good"}, headers=AUTH)
    assert r.status_code == 201, r.text
    assert classify(url, "good").status_code == 200
    assert request_count(url, "good") == before + 1
    assert httpx.post(f"{url}/v1/adapters/good", json={"path": "good"}, headers=AUTH).status_code == 409
    assert httpx.delete(f"{url}/v1/adapters/good", headers=AUTH).json() == {"deleted": "good"}


def test_bad_admin_bodies_and_names(server):
    url, _ = server
    add = f"{url}/v1/adapters/x"
    assert httpx.post(add, content=b"x" * 5000, headers=AUTH).status_code == 413  # not JSON: refused by size first

    def trickle():  # chunked: no content-length to refuse it by
        for _ in range(10):
            yield b"x" * 1000

    assert httpx.post(add, content=trickle(), headers=AUTH).status_code == 413
    for body in (b"[1]", b"{not json", b'{"path": 3}', b"[" * 3000):
        r = httpx.post(add, content=body, headers={**AUTH, "content-type": "application/json"})
        assert r.status_code == 400, (body[:20], r.text)
    for name in ("good%0A", "a.b", "-x"):  # %0A: a trailing newline, which `$` alone would let through
        r = httpx.post(f"{url}/v1/adapters/{name}", json={"path": "good"}, headers=AUTH)
        assert r.status_code == 400 and "must match" in r.json()["detail"], (name, r.text)


def test_health_metrics_and_access_log(server):
    url, log_path = server
    assert httpx.get(f"{url}/livez").json() == {"status": "ok"}
    deadline = time.monotonic() + 30
    while (r := httpx.get(f"{url}/readyz")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert r.status_code == 200 and r.json() == {"status": "ready"}, r.text
    before = request_count(url, "a")
    assert classify(url, "a").status_code == 200
    assert classify(url, "nope").status_code == 404
    assert request_count(url, "a") == before + 1
    assert request_count(url, "unknown", "404") >= 1  # a client-chosen name is never a label
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)}
    for name in ("imgtune_request_seconds", "imgtune_queue_wait_seconds", "imgtune_batch_size"):
        assert families[name].type == "histogram"
        count = [s.value for s in families[name].samples if s.name.endswith("_count")]
        assert sum(count) >= 1, name
    assert families["imgtune_resident_adapters"].samples[0].value >= 1
    assert {
        "imgtune_queue_depth",
        "imgtune_known_adapters",
        "imgtune_adapter_loads",
        "imgtune_adapter_evictions",
    } <= set(families)
    time.sleep(0.2)
    lines = [line for line in log_path.read_text().splitlines() if "/v1/classify" in line]
    assert any("POST /v1/classify 200 adapter=a " in line and line.endswith(" ms") for line in lines), lines


def test_readiness_says_which_adapter_fails_and_recovers():
    """In process, on a stand-in engine: a failing adapter turns /readyz's answer to not ready with its reason;
    the next probe after it recovers says ready."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from imgtune.serve.health import Readiness

    class Engine:
        broken = True
        adapters = {n: SimpleNamespace(spec=SimpleNamespace(size=8)) for n in ("a", "d")}

        def probabilities(self, names, pixels):
            assert all(p.shape == (3, 8, 8) for p in pixels)
            return [
                ValueError("hooks left on the layers") if n == "d" and self.broken else p for n, p in zip(names, pixels)
            ]

    async def probe_twice():
        engine, executor = Engine(), ThreadPoolExecutor(1)
        readiness = Readiness(engine, executor)
        readiness.batch_failed()
        await readiness.probing
        first = (readiness.ready, readiness.reason)
        engine.broken = False
        readiness.check()
        await readiness.probing
        return first, (readiness.ready, readiness.reason)

    first, second = asyncio.run(probe_twice())
    assert first == (False, "d: hooks left on the layers") and second == (True, "ok")


def test_an_adapter_replaced_under_load_never_gives_5xx_or_another_runs_answer(server, root, tiny_vit, tmp_path):
    """Clients keep asking for "x" while an admin removes it and adds another run under its name (another
    class count): each answer is 200 with exactly one of the two runs' predictions, or 404; never a 5xx,
    a dropped connection, or one run's scores under the other's labels."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import tiny_train_config, write_class_folder
    from imgtune.inference.predict import Predictor
    from imgtune.tuning.recipe import train

    url, _ = server
    two = write_class_folder(tmp_path / "two", per_class=6, classes={"red": (200, 40, 40), "blue": (40, 60, 200)})
    train(tiny_train_config(tiny_vit, two, root / "two", epochs=1))
    image = tmp_path / "x.png"
    image.write_bytes(png())
    predictors = [Predictor.from_dir(root / run, device="cpu", precision="fp32") for run in ("good", "two")]
    expected = [p.predict([str(image)], top_k=3)[0][0]["predictions"] for p in predictors]
    stop = time.monotonic() + 6

    def client(_):
        seen = []
        with httpx.Client(timeout=30) as http:
            while time.monotonic() < stop:
                r = http.post(f"{url}/v1/classify", params={"adapter": "x", "top_k": 3}, content=png(),
                              headers={"content-type": "image/png"})  # fmt: skip
                seen.append((r.status_code, r.json()))
        return seen

    def admin():
        runs = 0
        while time.monotonic() < stop:
            for run in ("good", "two"):
                httpx.post(f"{url}/v1/adapters/x", json={"path": run}, headers=AUTH, timeout=30)
                time.sleep(0.05)
                httpx.delete(f"{url}/v1/adapters/x", headers=AUTH, timeout=30)
                runs += 1
        return runs

    with ThreadPoolExecutor(7) as pool:
        swaps = pool.submit(admin)
        answers = [a for seen in pool.map(client, range(6)) for a in seen]
    assert swaps.result() >= 2
    statuses = {status for status, _ in answers}
    assert statuses <= {200, 404}, statuses
    answered = [body["predictions"] for status, body in answers if status == 200]
    assert answered, "no request was answered while the adapter came and went"
    for got in answered:
        assert any(
            [g["label"] for g in got] == [w["label"] for w in want]
            and all(abs(g["score"] - w["score"]) <= 1e-4 for g, w in zip(got, want))
            for want in expected
        ), got
