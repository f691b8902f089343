"""imgtune serve: a real uvicorn server (subprocess) on a loopback port, several adapters on one base."""

from __future__ import annotations

import io
import os
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import (
    free_port,
    perturbed_copy,
    run_cli,
    start_server,
    stop_server,
    tiny_train_config,
    write_class_folder,
)
from imgtune.data.decode import BadImage, decode_rgb
from imgtune.data.samples import stack_images
from imgtune.errors import UserError
from imgtune.inference.predict import Predictor
from imgtune.serve.engine import MultiAdapterModel
from imgtune.tuning.methods import METHODS
from imgtune.tuning.recipe import train

TWO = {"red": (200, 40, 40), "blue": (40, 60, 200)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_vit, colour_folder, lora_run):
    """a: 3-class LoRA; b: 2-class LoRA (another head width); c: 3-class LoRA, other weights (mixed batch with a)."""
    root = tmp_path_factory.mktemp("serve-runs")
    two = write_class_folder(root / "two", per_class=6, classes=TWO)
    train(tiny_train_config(tiny_vit, two, root / "b", epochs=2))
    train(tiny_train_config(tiny_vit, colour_folder, root / "c", epochs=1, seed=1, lr=1e-2))
    return {"a": lora_run, "b": root / "b", "c": root / "c"}


@pytest.fixture(scope="module")
def server(runs, tiny_vit, tmp_path_factory):
    args = ["--base", tiny_vit, "--max-batch", "16", "--max-wait-ms", "20", "--max-bytes", "200000",
            "--max-pixels", "1000000", *[f"--adapter={n}={p}" for n, p in runs.items()]]  # fmt: skip
    proc, url, _ = start_server(args, tmp_path_factory.mktemp("serve-log") / "server.log")
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def images(colour_folder) -> list:
    return sorted(colour_folder.rglob("*_[0-3].*"))  # 4 per class, JPEG and PNG, several sizes


def close_to(got: list[dict], want: list[dict]) -> bool:
    return [g["label"] for g in got] == [w["label"] for w in want] and all(
        abs(g["score"] - w["score"]) <= 1e-5 for g, w in zip(got, want)
    )


def test_happy_path_matches_predict(server, runs, images):
    listing = httpx.get(f"{server}/v1/adapters").json()
    assert {a["name"]: a["num_labels"] for a in listing["adapters"]} == {"a": 3, "b": 2, "c": 3}
    predictor = Predictor.from_dir(runs["a"], device="cpu", precision="fp32")
    expected, _ = predictor.predict([str(p) for p in images[:2]], top_k=2)
    # multipart upload and raw body give what `imgtune predict` gives
    with open(images[0], "rb") as f:
        r = httpx.post(f"{server}/v1/classify", params={"adapter": "a", "top_k": 2}, files={"file": f})
    assert r.status_code == 200, r.text
    assert r.json()["adapter"] == "a" and close_to(r.json()["predictions"], expected[0]["predictions"])
    r = httpx.post(
        f"{server}/v1/classify?adapter=a&top_k=2",
        content=images[1].read_bytes(),
        headers={"content-type": "image/png" if images[1].suffix == ".png" else "image/jpeg"},
    )
    assert r.status_code == 200 and close_to(r.json()["predictions"], expected[1]["predictions"])
    assert httpx.get(f"{server}/docs").status_code == 200
    assert "/v1/classify" in httpx.get(f"{server}/openapi.json").json()["paths"]


def test_mixed_adapter_burst_is_batched_and_each_answer_is_its_adapters(server, runs, images):
    predictors = {n: Predictor.from_dir(p, device="cpu", precision="fp32") for n, p in runs.items()}
    expected = {n: pr.predict([str(p) for p in images], top_k=3)[0] for n, pr in predictors.items()}
    jobs = [(n, i) for i in range(len(images)) for n in ("a", "b", "c")]
    before = httpx.get(f"{server}/healthz").json()

    def call(job):
        name, i = job
        r = httpx.post(
            f"{server}/v1/classify",
            params={"adapter": name, "top_k": 3},
            files={"file": (images[i].name, images[i].read_bytes(), "image/jpeg")},
            timeout=60,
        )
        return job, r

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(call, jobs))
    for (name, i), r in answers:
        assert r.status_code == 200, r.text
        assert len(r.json()["predictions"]) == (2 if name == "b" else 3)
        assert close_to(r.json()["predictions"], expected[name][i]["predictions"]), (name, i)
    after = httpx.get(f"{server}/healthz").json()
    assert after["images"] - before["images"] == len(jobs)
    assert after["batches"] - before["batches"] < len(jobs)  # several requests shared a forward pass


def png_bytes(size, colour=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_requests_get_error_codes_not_crashes(server):
    classify = f"{server}/v1/classify"
    good = png_bytes((40, 40))
    cases = [
        (400, dict(params={"adapter": "a"}, content=b"not an image at all", headers={"content-type": "image/png"})),
        (400, dict(params={"adapter": "a"}, files={"file": ("x.jpg", good[: len(good) // 2], "image/jpeg")})),
        (415, dict(params={"adapter": "a"}, files={"file": ("notes.txt", b"hello", "text/plain")})),
        (415, dict(params={"adapter": "a"}, content=b'{"a": 1}', headers={"content-type": "application/json"})),
        (413, dict(params={"adapter": "a"}, files={"file": ("big.png", png_bytes((1100, 1000)), "image/png")})),
        (
            413,
            dict(
                params={"adapter": "a"},
                content=np.random.default_rng(0).bytes(400_000),
                headers={"content-type": "image/jpeg"},
            ),
        ),
        (404, dict(params={"adapter": "nope"}, content=good, headers={"content-type": "image/png"})),
        (404, dict(params={"adapter": "../../etc/passwd"}, content=good, headers={"content-type": "image/png"})),
        (400, dict(content=good, headers={"content-type": "image/png"})),  # several adapters: name one
    ]
    for status, kwargs in cases:
        r = httpx.post(classify, **kwargs)
        assert r.status_code == status, (status, r.status_code, r.text)
        assert "detail" in r.json()
        assert "BytesIO" not in r.text and " at 0x" not in r.text  # no object reprs leak into answers
    r = httpx.post(
        classify, params={"adapter": "a"}, content=b"not an image at all", headers={"content-type": "image/png"}
    )
    assert (
        r.json()["detail"] == "cannot read image: cannot identify image file (not an image, or an unsupported format)"
    )
    # admin endpoints are off without --allow-admin
    assert httpx.post(f"{server}/v1/adapters/d", json={"path": "/tmp"}).status_code == 403
    assert httpx.delete(f"{server}/v1/adapters/a").status_code == 403
    # and the server is still fine
    r = httpx.post(classify, params={"adapter": "b"}, content=good, headers={"content-type": "image/png"})
    assert r.status_code == 200 and httpx.get(f"{server}/healthz").json()["status"] == "ok"


def test_mixed_peft_types_on_one_base_in_process(tmp_path, tiny_vit, colour_folder, runs, images):
    """LoHa beside LoRA needs peft's PeftMixedModel; admin add/remove keep the others' answers."""
    train(tiny_train_config(tiny_vit, colour_folder, tmp_path / "loha", method="loha", epochs=1))
    model = MultiAdapterModel(
        str(tiny_vit), [("a", runs["a"]), ("h", tmp_path / "loha")], device="cpu", precision="fp32"
    )
    model.add("b", runs["b"])
    names = ["a", "h", "b", "h", "a", "b"]
    data = [images[i].read_bytes() for i in range(len(names))]
    rows = model.probabilities(names, [model.preprocess(n, d) for n, d in zip(names, data)])
    paths = {"a": runs["a"], "h": tmp_path / "loha", "b": runs["b"]}
    for i, (name, row) in enumerate(zip(names, rows)):
        want = Predictor.from_dir(paths[name], device="cpu", precision="fp32").predict([str(images[i])], top_k=3)[0][0][
            "predictions"
        ]
        assert close_to(model.top_k(name, row, 3), want), name
    model.remove("h")
    assert list(model.adapters) == ["a", "b"]


def test_decode_error_for_bytes_names_no_object_address():
    with pytest.raises(BadImage) as caught:
        decode_rgb(b"not an image at all")
    assert str(caught.value) == "cannot identify image file (not an image, or an unsupported format)"


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory, colour_folder):
    """A LoRA run on a ViT of another hidden size (48, the tiny_vit's is 32): same family, other architecture."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    root = tmp_path_factory.mktemp("wide")
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
    )
    ViTForImageClassification(config).save_pretrained(root / "wide-vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "wide-vit")
    train(tiny_train_config(root / "wide-vit", colour_folder, root / "run", epochs=1))
    return root / "run"


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("imgtune: error: "), lines
    return lines[0]


def test_adapter_of_another_architecture_is_a_one_line_error(tiny_vit, wide_run):
    result = run_cli(
        "serve",
        "--base",
        tiny_vit,
        "--adapter",
        f"w={wide_run}",
        "--port",
        free_port(),
        "--device",
        "cpu",
        "--precision",
        "fp32",
    )
    line = one_error_line(result)
    assert line.startswith(f"imgtune: error: cannot load {wide_run} onto base {tiny_vit}: size mismatch for ")
    assert line.endswith(f"serve it on the base it was trained on ({wide_run.parent / 'wide-vit'})")
    assert len(line) < 600 and "serving" not in result.stderr


def test_added_adapter_of_another_architecture_is_refused_and_leaves_the_model_as_it_was(
    tiny_vit, lora_run, wide_run, images
):
    # peft's load_adapter(ignore_mismatched_sizes=True) would skip every mismatched LoRA tensor silently:
    # the adapter would load and fail (or answer nonsense) at request time
    model = MultiAdapterModel(str(tiny_vit), [("a", lora_run)], device="cpu", precision="fp32")
    data = images[0].read_bytes()
    before = model.probabilities(["a"], [model.preprocess("a", data)])[0]
    with pytest.raises(UserError, match=r"cannot load .* size mismatch for .*lora_\w\.w\.weight") as caught:
        model.add("w", wide_run)
    assert "\n" not in str(caught.value)
    assert list(model.adapters) == ["a"] and "w" not in model.model.peft_config
    after = model.probabilities(["a"], [model.preprocess("a", data)])[0]
    assert (after - before).abs().max() < 1e-6
    model.add("w2", lora_run)  # the name space and the model still take a good adapter
    assert list(model.adapters) == ["a", "w2"]


def test_serving_on_another_base_directory_warns_once_per_adapter(tmp_path, tiny_vit, lora_run, caplog):
    copy = shutil.copytree(tiny_vit, tmp_path / "copied-vit")
    MultiAdapterModel(str(copy), [("a", lora_run), ("b", lora_run)], device="cpu", precision="fp32")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"adapter {n!r} was trained on {tiny_vit.resolve()}, serving it on {copy}" for n in ("a", "b")]
    # the same directory under another spelling (relative to the working directory) is the one it was trained on
    spelled = os.path.relpath(tiny_vit)
    caplog.clear()
    MultiAdapterModel(spelled, [("a", lora_run)], device="cpu", precision="fp32")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_port_in_use_is_a_one_line_error_before_loading(tiny_vit, lora_run):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = run_cli(
            "serve", "--base", tiny_vit, "--adapter", f"a={lora_run}", "--port", port, "--device", "cpu", timeout=120
        )
    line = one_error_line(result)
    assert line == f"imgtune: error: cannot listen on 127.0.0.1:{port}: address already in use (pick another --port)"
    assert "serving" not in result.stdout + result.stderr


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_port_out_of_range_is_a_usage_error(tiny_vit, lora_run, port):
    result = run_cli("serve", "--base", tiny_vit, "--adapter", f"a={lora_run}", f"--port={port}", timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    shown = repr(port) if port == "http" else port  # a non-number is quoted
    assert f"argument --port: {shown} is not a port number (0..65535)" in result.stderr


def test_a_dora_adapter_among_lora_ones_does_not_break_the_server(tmp_path, tiny_vit, colour_folder, lora_run):
    """DoRA cannot take peft's mixed-batch forward: it is grouped on its own (decided from its own config,
    not its method's name), and a forward that raises leaves no stale hooks behind."""
    dora = tmp_path / "dora"
    train(tiny_train_config(tiny_vit, colour_folder, dora, epochs=1, method_options={"use_dora": True}))
    model = MultiAdapterModel(str(tiny_vit), [("a", lora_run), ("b", lora_run), ("d", dora)], "cpu", "fp32")
    assert not model.adapters["d"].mixed_batch and model.adapters["a"].mixed_batch
    data = png_bytes((40, 40))
    names = ["a", "d", "b", "d", "a"]
    pixels = [model.preprocess(n, data) for n in names]
    rows = model.probabilities(names, pixels)
    for name, row in zip(names, rows):
        assert (row - model.probabilities([name], [model.preprocess(name, data)])[0]).abs().max() < 1e-5
    # what a mixed forward with DoRA does in peft: it raises, and must not leave hooks on the layers
    batch = model.normalizers[model.adapters["a"].spec](stack_images(pixels[:2]))
    with pytest.raises(ValueError):
        model.forward_leaving_no_hooks(pixel_values=batch, adapter_names=["a", "d"])
    after = model.probabilities(names, pixels)
    assert all((x - y).abs().max() < 1e-6 for x, y in zip(rows, after))


def test_adapters_of_different_class_counts_share_one_backbone_pass(tiny_vit, runs, images):
    """a (3 classes), b (2 classes) and c (3 classes, other weights) in one batch: the backbone runs once,
    each row gets its own adapter's head, and every row equals that adapter's own model (fp32, unmerged)."""
    model = MultiAdapterModel(str(tiny_vit), list(runs.items()), device="cpu", precision="fp32")
    assert model.shared_head is not None
    backbone = model.model.base_model.model.vit
    passes = []
    backbone.register_forward_hook(lambda module, args, out: passes.append(args[0].shape[0] if args else None))
    names = ["a", "b", "c", "b", "a", "c"]
    pixels = [model.preprocess(n, images[i].read_bytes()) for i, n in enumerate(names)]
    rows = model.probabilities(names, pixels)
    assert len(passes) == 1  # one backbone pass for the whole batch, whatever the class counts
    assert [len(r) for r in rows] == [3, 2, 3, 2, 3, 3]
    for i, (name, row) in enumerate(zip(names, rows)):
        own = Predictor.from_dir(runs[name], device="cpu", precision="fp32", merge=False)
        want = own.predict([str(images[i])], top_k=3)[0][0]["predictions"]
        assert same_scores(model.top_k(name, row, 3), want, 1e-4), name


def test_a_failing_shared_pass_puts_the_head_back(tiny_vit, runs, images):
    model = MultiAdapterModel(str(tiny_vit), list(runs.items()), device="cpu", precision="fp32")
    names = ["a", "b"]
    pixels = [model.preprocess(n, images[0].read_bytes()) for n in names]
    before = model.probabilities(names, pixels)
    backbone = model.model.base_model.model.vit

    def fail(module, args):
        raise RuntimeError("out of memory")

    handle = backbone.register_forward_pre_hook(fail)
    rows = model.probabilities(names, pixels)
    assert all(isinstance(r, RuntimeError) for r in rows)  # the group's requests get the error
    handle.remove()
    head = model.model.base_model.model.classifier
    assert head is model.shared_head.wrapper  # not left as the pass-through
    after = model.probabilities(names, pixels)
    assert all((x - y).abs().max() < 1e-6 for x, y in zip(before, after))


def same_scores(got: list[dict], want: list[dict], tolerance: float) -> bool:
    score = {w["label"]: w["score"] for w in want}
    return len(got) == len(want) and all(abs(g["score"] - score[g["label"]]) <= tolerance for g in got)


ADAPTER_METHODS = [name for name, method in METHODS.items() if method.is_adapter]


@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_every_method_answers_in_a_batch_as_its_own_model(tmp_path, tiny_vit, colour_folder, images, method):
    """Two adapters of one method (trained, and the same nudged) in one batch: every row equals that
    adapter's own single-adapter model, unmerged, fp32, within 1e-4 - mixed pass or one per adapter."""
    train(tiny_train_config(tiny_vit, colour_folder, tmp_path / "x", method=method, epochs=1))
    paths = {"x": tmp_path / "x", "y": perturbed_copy(tmp_path / "x", tmp_path / "y", seed=1)}
    model = MultiAdapterModel(str(tiny_vit), list(paths.items()), device="cpu", precision="fp32")
    names = ["x", "y", "y", "x"]
    rows = model.probabilities(names, [model.preprocess(n, images[i].read_bytes()) for i, n in enumerate(names)])
    for i, (name, row) in enumerate(zip(names, rows)):
        own = Predictor.from_dir(paths[name], device="cpu", precision="fp32", merge=False)
        want = own.predict([str(images[i])], top_k=3)[0][0]["predictions"]
        assert same_scores(model.top_k(name, row, 3), want, 1e-4), (method, name)


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory, tiny_vit):
    """A linear probe (head only trained, a whole model saved) on two classes."""
    root = tmp_path_factory.mktemp("probe")
    two = write_class_folder(root / "two", per_class=6, classes=TWO)
    train(tiny_train_config(tiny_vit, two, root / "run", method="linear", epochs=2))
    return root / "run"


def test_a_linear_probe_is_served_as_its_head_on_the_shared_backbone_pass(tiny_vit, runs, probe_run, images):
    model = MultiAdapterModel(str(tiny_vit), [("a", runs["a"]), ("p", probe_run), ("b", runs["b"])], "cpu", "fp32")
    assert model.adapters["p"].method == "linear" and "p" not in model.model.peft_config
    passes = []
    model.model.base_model.model.vit.register_forward_hook(lambda *_: passes.append(1))
    names = ["p", "a", "b", "p"]
    rows = model.probabilities(names, [model.preprocess(n, images[i].read_bytes()) for i, n in enumerate(names)])
    assert len(passes) == 1  # the probe's rows ride the LoRA adapters' pass, with no adapter applied
    probe = Predictor.from_dir(probe_run, device="cpu", precision="fp32")
    for i, (name, row) in enumerate(zip(names, rows)):
        own = probe if name == "p" else Predictor.from_dir(runs[name], device="cpu", precision="fp32", merge=False)
        want = own.predict([str(images[i])], top_k=3)[0][0]["predictions"]
        assert same_scores(model.top_k(name, row, 3), want, 1e-4), name
    model.remove("p")  # off the model, like an adapter
    assert "p" not in model.probe_heads


def test_a_linear_probe_beside_adapters_that_cannot_route_rows(tmp_path, tiny_vit, colour_folder, probe_run, images):
    train(tiny_train_config(tiny_vit, colour_folder, tmp_path / "loha", method="loha", epochs=1))
    model = MultiAdapterModel(str(tiny_vit), [("h", tmp_path / "loha"), ("p", probe_run)], "cpu", "fp32")
    names = ["p", "h", "p"]
    rows = model.probabilities(names, [model.preprocess(n, images[i].read_bytes()) for i, n in enumerate(names)])
    paths = {"h": tmp_path / "loha", "p": probe_run}
    for i, (name, row) in enumerate(zip(names, rows)):
        want = Predictor.from_dir(paths[name], device="cpu", precision="fp32", merge=False).predict(
            [str(images[i])], top_k=3
        )[0][0]["predictions"]
        assert same_scores(model.top_k(name, row, 3), want, 1e-4), name


def test_whole_models_that_are_not_probes_of_this_base_are_refused(tmp_path, tiny_vit, colour_folder, runs, wide_run):
    train(tiny_train_config(tiny_vit, colour_folder, tmp_path / "full", method="full", epochs=1))
    model = MultiAdapterModel(str(tiny_vit), [("a", runs["a"])], "cpu", "fp32")
    with pytest.raises(UserError, match=r"holds a whole model trained with full \(no adapter\)"):
        model.add("f", tmp_path / "full")
    wide_probe = tmp_path / "wide-probe"
    train(tiny_train_config(wide_run.parent / "wide-vit", colour_folder, wide_probe, method="linear", epochs=1))
    with pytest.raises(UserError, match=r"is not a linear probe of this base"):
        model.add("w", wide_probe)
    assert list(model.adapters) == ["a"]
    with pytest.raises(UserError, match=r"give at least one adapter run"):
        MultiAdapterModel(str(tiny_vit), [("p", wide_probe)], "cpu", "fp32")
