"""Many adapters: an --adapter-dir catalog, a resident pool with an LRU cap, loads on first use."""

from __future__ import annotations

import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from safetensors.torch import load_file, save_file

from conftest import perturbed_copy, start_server, stop_server
from imgtune.inference.predict import Predictor
from imgtune.rundir import ADAPTER_WEIGHTS, load_run
from imgtune.serve.engine import MultiAdapterModel
from imgtune.serve.pool import ResidentPool

NAMES = [f"p{i}" for i in range(5)]
TOKEN = "pool-test-token"


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, lora_run):
    root = tmp_path_factory.mktemp("adapters")
    for i, name in enumerate(NAMES):
        perturbed_copy(lora_run, root / name, seed=i + 1)
    (root / "notes").mkdir()  # not a run: passed over
    shutil.copytree(root / "p0", root / "bad.name")  # a run whose folder is not a usable name: skipped
    return root


@pytest.fixture(scope="module")
def images(colour_folder) -> list:
    return sorted(colour_folder.rglob("*_[0-1].*"))  # 2 per class


@pytest.fixture(scope="module")
def expected(adapter_dir, images):
    """Each adapter's own single-adapter model, unmerged, fp32: the answers the server must give."""
    out = {}
    for name in NAMES:
        predictor = Predictor(load_run(adapter_dir / name), device="cpu", precision="fp32", merge=False)
        out[name] = [r["predictions"] for r in predictor.predict([str(p) for p in images], top_k=3)[0]]
    return out


def same_scores(got: list[dict], want: list[dict]) -> bool:
    score = {w["label"]: w["score"] for w in want}
    return len(got) == len(want) and all(abs(g["score"] - score[g["label"]]) <= 1e-4 for g in got)


def settle(model) -> None:
    model.pool.loader.submit(lambda: None).result()  # queued unloads are done


def test_pool_loads_on_first_use_evicts_lru_and_never_a_pinned_adapter(tiny_vit, adapter_dir, images, expected):
    model = MultiAdapterModel(str(tiny_vit), [], "cpu", "fp32", [adapter_dir], max_resident=2, preload=["p3"])
    pool = model.pool
    assert list(model.adapters) == NAMES  # "notes" and "bad.name" are not adapters
    assert list(pool.resident) == ["p3"] and pool.loads == 1  # preloaded; the rest wait for their first use
    data = [p.read_bytes() for p in images]
    # every adapter in one batch: all pinned for it, so over the cap for the batch, back to 2 after
    names = [NAMES[i % 5] for i in range(len(data))] + NAMES
    rows = model.probabilities(names, [model.preprocess(n, data[i % len(data)]) for i, n in enumerate(names)])
    for i, (name, row) in enumerate(zip(names, rows)):
        assert same_scores(model.top_k(name, row, 3), expected[name][i % len(data)]), name
    settle(model)
    assert len(pool.resident) == 2 and pool.evictions == 3 and pool.loads == 5
    assert set(model.model.peft_config) == set(pool.resident)  # evicted means off the model, not just forgotten
    assert pool.load_seconds > 0 and all(pool.last_error[n] is None for n in NAMES)
    # an adapter with requests in flight stays while every other adapter comes and goes
    held = next(iter(pool.resident))
    with pool.pinned([held]):
        for name in NAMES:
            row = model.probabilities([name], [model.preprocess(name, data[0])])[0]
            assert same_scores(model.top_k(name, row, 3), expected[name][0]), name
            settle(model)
            assert held in pool.resident and held in model.model.peft_config
    assert pool.evictions > 3 and pool.hits + pool.misses == 0  # batches re-check without counting requests


def test_pinned_adapters_are_never_evicted_and_a_cold_load_does_not_block_a_resident_one():
    loaded, unloaded, gate = [], [], threading.Event()

    def load(name):
        if name == "slow":
            assert gate.wait(10)
        loaded.append(name)

    pool = ResidentPool(load, unloaded.append, max_resident=1)
    pool.request("a").result()
    pool.pin(["a"])
    with pool.pinned(["b"]):
        pool.request("b").result()
        assert list(pool.resident) == ["a", "b"] and pool.evictions == 0  # both pinned: over the cap for now
    pool.loader.submit(lambda: None).result()
    assert unloaded == ["b"] and list(pool.resident) == ["a"] and pool.evictions == 1
    pool.unpin(["a"])
    with pool.pinned(["slow"]):
        cold = pool.request("slow")
        started = time.monotonic()
        assert pool.request("a").done() and time.monotonic() - started < 1  # a hit answers at once
        assert not cold.done()
        gate.set()
        cold.result(timeout=10)
    pool.loader.submit(lambda: None).result()
    assert list(pool.resident) == ["slow"] and unloaded == ["b", "a"]
    assert (pool.loads, pool.hits, pool.misses, pool.load_counts["slow"]) == (3, 1, 3, 1)
    pool.close()


def test_an_adapter_that_will_not_load_fails_only_its_own_requests(tiny_vit, adapter_dir, lora_run, tmp_path, images):
    root = tmp_path / "dir"
    root.mkdir()
    shutil.copytree(adapter_dir / "p0", root / "good")
    shutil.copytree(adapter_dir / "p0", root / "garbage")
    (root / "garbage" / ADAPTER_WEIGHTS).write_bytes(b"not safetensors at all")
    # readable metadata, LoRA tensors of another rank: found by the catalog, refused when it loads
    broken = shutil.copytree(adapter_dir / "p0", root / "broken") / ADAPTER_WEIGHTS
    save_file({k: v[:1] if "lora_A" in k else v for k, v in load_file(broken).items()}, broken)
    model = MultiAdapterModel(str(tiny_vit), [], "cpu", "fp32", [root], max_resident=1, preload=["good"])
    assert sorted(model.adapters) == ["broken", "good"]  # the unreadable folder is skipped with a warning
    data = images[0].read_bytes()
    rows = model.probabilities(["good", "broken"], [model.preprocess(n, data) for n in ("good", "broken")])
    assert isinstance(rows[1], Exception) and not isinstance(rows[0], Exception)
    state = {a["name"]: a for a in model.listing()}
    assert state["broken"]["last_error"] and not state["broken"]["resident"]
    assert state["good"] == {**state["good"], "resident": True, "loads": 1, "last_error": None}


def test_server_with_an_adapter_dir_answers_for_each_adapter_and_rescans(
    tiny_vit, adapter_dir, images, expected, tmp_path
):
    args = ["--base", str(tiny_vit), "--adapter-dir", str(adapter_dir), "--max-resident", "2", "--preload", "p1"]
    proc, url, _ = start_server([*args, "--allow-admin", "--admin-token", TOKEN], tmp_path / "server.log")
    try:
        listing = httpx.get(f"{url}/v1/adapters").json()
        assert [a["name"] for a in listing["adapters"]] == NAMES and listing["max_resident"] == 2
        jobs = [(name, i) for i in range(len(images)) for name in NAMES]

        def call(job):
            name, i = job
            r = httpx.post(
                f"{url}/v1/classify",
                params={"adapter": name, "top_k": 3},
                files={"file": (images[i].name, images[i].read_bytes(), "image/jpeg")},
                timeout=60,
            )
            return job, r

        with ThreadPoolExecutor(6) as workers:
            answers = list(workers.map(call, jobs))
        for (name, i), r in answers:
            assert r.status_code == 200, r.text
            assert same_scores(r.json()["predictions"], expected[name][i]), (name, i)
        listing = httpx.get(f"{url}/v1/adapters").json()["adapters"]
        assert sum(a["resident"] for a in listing) <= 2
        assert sum(a["loads"] for a in listing) > len(NAMES)  # some were evicted and loaded again
        assert all(a["last_error"] is None for a in listing)
        # a run copied in while serving is found on rescan (admin only) and loaded on its first request
        shutil.copytree(adapter_dir / "p2", tmp_path / "p5")
        shutil.move(tmp_path / "p5", adapter_dir / "p5")
        assert httpx.post(f"{url}/v1/rescan").status_code in (401, 403)
        r = httpx.post(f"{url}/v1/rescan", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and r.json()["added"] == ["p5"], r.text
        r = call(("p5", 0))[1]
        assert r.status_code == 200 and same_scores(r.json()["predictions"], expected["p2"][0])
    finally:
        stop_server(proc)
        shutil.rmtree(adapter_dir / "p5", ignore_errors=True)


def test_a_byte_budget_keeps_the_resident_weights_under_it(tiny_vit, adapter_dir, images, expected):
    one = sum(t.numel() * t.element_size() for t in load_file(adapter_dir / "p0" / ADAPTER_WEIGHTS).values())
    budget = 2 * one + one // 2  # room for two adapters' tensors, not three
    model = MultiAdapterModel(str(tiny_vit), [], "cpu", "fp32", [adapter_dir], max_resident_bytes=budget)
    pool, data = model.pool, images[0].read_bytes()
    for name in NAMES:
        row = model.probabilities([name], [model.preprocess(name, data)])[0]
        assert same_scores(model.top_k(name, row, 3), expected[name][0]), name
        settle(model)
        assert pool.resident_bytes <= budget and name in pool.resident
    assert len(pool.resident) == 2 and pool.evictions == len(NAMES) - 2
    assert set(model.model.peft_config) == set(pool.resident)
    assert all(a["bytes"] == one for a in model.listing() if a["resident"])
