"""The page at / and the API docs at /docs: a real server on a loopback port serves every file they use
itself (they work offline), the OpenAPI schema describes the upload, the answers and every error, and a
real headless Chromium uses the page and Swagger UI's "Try it out" to get the API's own answers."""

from __future__ import annotations

import ast
import base64
import functools
import inspect
import json
import re
import shutil
import types
from pathlib import Path
from urllib.parse import urljoin, urlparse

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import start_server, stop_server, write_image
from imgtune.serve import admin, app, health
from imgtune.serve.schema import AdapterListing, Classification, Health

ADAPTERS = 40  # enough that the page's list has to be searched; each costs a few small files
URL = re.compile(r"""https?://[^\s"'<>()\\]+""")


def shuffled_head_copy(run: Path, out: Path, seed: int) -> Path:
    """``run`` with its classifier's rows permuted and rescaled: the same backbone, another answer."""
    shutil.copytree(run, out, ignore=shutil.ignore_patterns("checkpoints", "*.png", "*.html"))
    weights = load_file(out / "adapter_model.safetensors")
    generator = torch.Generator().manual_seed(seed)
    for key in [k for k in weights if ".classifier." in k]:
        rows = torch.randperm(weights[key].shape[0], generator=generator)
        weights[key] = (weights[key][rows] * (1 + seed / 10)).contiguous()
    save_file(weights, out / "adapter_model.safetensors")
    return out


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, lora_run) -> Path:
    root = tmp_path_factory.mktemp("many-adapters")
    for i in range(ADAPTERS):
        shuffled_head_copy(lora_run, root / f"site-{i:03d}", seed=i + 1)
    return root


@pytest.fixture(scope="module")
def server(adapter_dir, tiny_vit, tmp_path_factory):
    log = tmp_path_factory.mktemp("page-log") / "server.log"
    args = ["--base", tiny_vit, "--adapter-dir", adapter_dir, "--max-resident", "2", "--log-level", "info"]
    proc, url, _ = start_server(args, log)
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("page-images")
    return {
        "red": write_image(folder / "red.png", (200, 40, 40), seed=7),
        "green": write_image(folder / "green.jpg", (40, 180, 60), seed=8),
        "blue": write_image(folder / "blue.png", (40, 60, 200), seed=9),
    }


def api_answer(url: str, adapter: str, image: Path, top_k: int = 5) -> dict:
    with open(image, "rb") as f:
        r = httpx.post(f"{url}/v1/classify", params={"adapter": adapter, "top_k": top_k}, files={"file": f})
    assert r.status_code == 200, r.text
    return r.json()


def references(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)


def other_hosts(text: str, own: str) -> list[str]:
    return [u for u in URL.findall(text) if urlparse(u).netloc != urlparse(own).netloc]


# --- served by the server itself --------------------------------------------------------


def test_the_page_and_every_file_it_uses_come_from_the_server(server):
    r = httpx.get(f"{server}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), r.text[:200]
    refs = references(r.text)
    assert {"static/page.js", "static/page.css"} <= set(refs), refs
    texts = {"/": r.text}
    for ref in refs:
        if ref.startswith("data:"):
            continue
        target = urljoin(f"{server}/", ref)
        assert urlparse(target).netloc == urlparse(server).netloc, ref
        got = httpx.get(target)
        assert got.status_code == 200, (ref, got.status_code)
        texts[ref] = got.text
    for name, text in texts.items():
        assert other_hosts(text, server) == [], name


def test_docs_load_swagger_ui_from_the_server_and_redoc_is_off(server):
    r = httpx.get(f"{server}/docs")
    assert r.status_code == 200, r.text
    assert other_hosts(r.text, server) == []
    # Swagger UI's default validator would put a badge from validator.swagger.io on the page
    assert '"validatorUrl": null' in r.text
    refs = [ref for ref in references(r.text) if not ref.startswith("data:")]
    assert any(ref.endswith("swagger-ui-bundle.js") for ref in refs) and any(ref.endswith(".css") for ref in refs)
    for ref in [*refs, re.search(r"url: '([^']+)'", r.text).group(1)]:  # the assets and the schema it loads
        target = urljoin(f"{server}/docs", ref)
        assert urlparse(target).netloc == urlparse(server).netloc, ref
        assert httpx.get(target).status_code == 200, ref
    # the bundle's text names many URLs (SVG namespaces, RFCs); what it loads is checked in Chromium below
    assert httpx.get(f"{server}/redoc").status_code == 404  # Redoc would fetch its logo from its CDN


# --- the OpenAPI schema -----------------------------------------------------------------


def resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


@functools.cache
def module_functions(module: types.ModuleType) -> dict[str, ast.AST]:
    tree = ast.parse(inspect.getsource(module))
    return {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def error_codes(module: types.ModuleType, name: str, seen: set | None = None) -> set[int]:
    """Every status >= 400 the function raises (HTTPException(code, ...)) or answers (status_code=code),
    itself or through the functions of imgtune's server modules it calls or passes on, read from the source."""
    seen = set() if seen is None else seen
    if (module, name) in seen:
        return set()
    seen.add((module, name))
    codes = set()
    for node in ast.walk(module_functions(module)[name]):
        if isinstance(node, ast.Call):
            if (
                getattr(node.func, "id", None) == "HTTPException"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                codes.add(node.args[0].value)
            codes |= {
                k.value.value for k in node.keywords if k.arg == "status_code" and isinstance(k.value, ast.Constant)
            }
        target = None
        if isinstance(node, ast.Name) and node.id in module_functions(module):
            target = (module, node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            other = getattr(module, node.value.id, None)
            if isinstance(other, types.ModuleType) and other.__name__.startswith("imgtune.serve"):
                if node.attr in module_functions(other):
                    target = (other, node.attr)
        if target is not None:
            codes |= error_codes(*target, seen)
    return {c for c in codes if c >= 400}


def test_the_checker_finds_what_the_source_raises():
    """The code reader above follows calls across functions and modules: a known chain and a known answer."""
    assert {400, 404, 408, 413, 415, 503, 504} <= error_codes(app, "classify")  # 408: read_limited, via answer
    assert {401, 403} <= error_codes(app, "rescan")  # through admin.authorized
    assert error_codes(health, "readyz") == {503}  # JSONResponse(..., status_code=503)


def test_openapi_describes_the_upload_the_answers_and_every_error(server, images):
    schema = httpx.get(f"{server}/openapi.json").json()
    paths = schema["paths"]
    classify = paths["/v1/classify"]["post"]
    body = classify["requestBody"]
    assert body["required"]
    form = resolve(schema, body["content"]["multipart/form-data"]["schema"])
    assert form["required"] == ["file"] and form["properties"]["file"]["format"] == "binary"
    assert body["content"]["image/*"]["schema"]["format"] == "binary"
    answer = resolve(schema, classify["responses"]["200"]["content"]["application/json"]["schema"])
    prediction = resolve(schema, answer["properties"]["predictions"]["items"])
    assert {"label", "score"} <= set(prediction["properties"])
    listing = resolve(schema, paths["/v1/adapters"]["get"]["responses"]["200"]["content"]["application/json"]["schema"])
    adapter = resolve(schema, listing["properties"]["adapters"]["items"])
    assert {"name", "labels", "resident", "loads", "last_error"} <= set(adapter["properties"])
    assert "schema" in paths["/healthz"]["get"]["responses"]["200"]["content"]["application/json"]

    routes = [r for router in (app.router, health.router, admin.router) for r in router.routes]
    for route in routes:
        module = inspect.getmodule(route.endpoint)
        for method in route.methods:
            documented = paths[route.path][method.lower()]["responses"]
            raised = error_codes(module, route.endpoint.__name__)
            missing = {c for c in raised if str(c) not in documented}
            assert not missing, f"{method} {route.path} can answer {sorted(missing)}, undocumented"
            assert all(documented[c].get("description") for c in documented), route.path
    errors = classify["responses"]
    assert "Retry-After" in errors["503"]["headers"], errors["503"]
    assert resolve(schema, errors["404"]["content"]["application/json"]["schema"])["properties"].keys() == {"detail"}
    assert "WWW-Authenticate" in paths["/v1/rescan"]["post"]["responses"]["401"]["headers"]

    # what the server answers is what the schema says
    Classification.model_validate(api_answer(server, "site-001", images["red"]))
    AdapterListing.model_validate(httpx.get(f"{server}/v1/adapters").json())
    Health.model_validate(httpx.get(f"{server}/healthz").json())
    r = httpx.post(f"{server}/v1/classify?adapter=site-001", content=b"hello", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and isinstance(r.json()["detail"], str)


# --- in a real browser ------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # tests may run as root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # without these Chromium reaches for Google's servers in the background, and the network is closed
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's chromium and chromedriver, found on PATH and named to selenium, so Selenium Manager never
    looks for a driver on the network. The performance log records every request the pages make."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        missing = " and ".join(n for n, p in (("chromium", chromium), ("chromedriver", driver_path)) if p is None)
        pytest.skip(f"{missing} not installed (apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def wait_for(browser, condition, what: str, shown=None, timeout: float = 30):
    """``condition()`` once it is true; on timeout, fail with ``shown``'s text (an element)."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    # the page redraws its lists after each answer: an element read while it is replaced is read again
    wait = WebDriverWait(browser, timeout, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException])
    try:
        return wait.until(lambda _: condition())
    except TimeoutException:
        pytest.fail(f"timed out waiting for {what}" + (f"; the page shows:\n{shown.text}" if shown else ""))


def bars(browser) -> list[dict]:
    """The bars as shown: label, the percentage's text, the exact score and the fill's share of its track."""
    from selenium.webdriver.common.by import By

    shown = []
    for item in browser.find_elements(By.CSS_SELECTOR, "#bars li"):
        fill, track = item.find_element(By.CSS_SELECTOR, ".fill"), item.find_element(By.CSS_SELECTOR, ".bar")
        shown.append({
            "label": item.find_element(By.CSS_SELECTOR, ".label").text,
            "percent": item.find_element(By.CSS_SELECTOR, ".pct").text,
            "score": float(item.get_attribute("data-score")),
            "fill": fill.size["width"] / track.size["width"],
        })  # fmt: skip
    return shown


def shows(browser, answer: dict) -> bool:
    from selenium.webdriver.common.by import By

    adapter = browser.find_element(By.ID, "bars").get_attribute("data-adapter")
    got = bars(browser)
    return adapter == answer["adapter"] and [(b["label"], b["score"]) for b in got] == [
        (p["label"], p["score"]) for p in answer["predictions"]
    ]


def check_bars(browser, answer: dict) -> None:
    """The page shows the API's answer: the same labels in the same order, percentages that round the
    scores, bars as long as the scores."""
    wait_for(browser, lambda: shows(browser, answer), f"the bars of {answer}")
    for bar, want in zip(bars(browser), answer["predictions"]):
        assert re.fullmatch(r"\d+\.\d%", bar["percent"]), bar
        assert abs(float(bar["percent"][:-1]) - want["score"] * 100) <= 0.05 + 1e-9, (bar, want)
        assert abs(bar["fill"] - want["score"]) <= 0.01, (bar, want)


def hand_over(browser, image: Path, how: str) -> None:
    """Drop ``image`` on the drop zone or paste it, as a browser delivers them (a DataTransfer of files)."""
    browser.execute_script(
        """const [data, name, type, how] = arguments;
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const files = new DataTransfer();
        files.items.add(new File([bytes], name, {type}));
        const init = {bubbles: true, cancelable: true};
        const event = how === "drop" ? new DragEvent("drop", {...init, dataTransfer: files})
                                     : new ClipboardEvent("paste", {...init, clipboardData: files});
        (how === "drop" ? document.getElementById("drop") : document.body).dispatchEvent(event);""",
        base64.b64encode(image.read_bytes()).decode(),
        image.name,
        "image/png" if image.suffix == ".png" else "image/jpeg",
        how,
    )


def requested_urls(browser) -> list[str]:
    """Every http(s) request the browser made since the last call (the performance log empties as read)."""
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return [u for u in urls if urlparse(u).scheme in ("http", "https", "ws", "wss")]


def test_the_page_in_chromium_shows_the_apis_answer(server, browser, images, tmp_path):
    from selenium.webdriver.common.by import By

    listing = httpx.get(f"{server}/v1/adapters").json()["adapters"]
    browser.get(f"{server}/")
    rows = lambda: browser.find_elements(By.CSS_SELECTOR, "#adapters button")  # noqa: E731
    wait_for(browser, lambda: len(rows()) == len(listing), "the adapter list")
    # searching narrows the list to the names that contain what was typed
    browser.find_element(By.ID, "adapter").send_keys("-01")
    wanted = sorted(a["name"] for a in listing if "-01" in a["name"])
    wait_for(browser, lambda: sorted(r.get_attribute("data-name") for r in rows()) == wanted, f"only {wanted}")
    browser.find_element(By.CSS_SELECTOR, 'button[data-name="site-013"]').click()
    browser.find_element(By.ID, "file").send_keys(str(images["red"]))
    first = api_answer(server, "site-013", images["red"])
    check_bars(browser, first)
    assert re.fullmatch(r"site-013 answered in \d+ ms .*", browser.find_element(By.ID, "latency").text)
    # its first request loaded it: the refreshed list says so, within the resident cap
    state = lambda: browser.find_element(By.CSS_SELECTOR, 'button[data-name="site-013"] .state').text  # noqa: E731
    wait_for(browser, lambda: state() == "resident", "site-013 shown resident")
    assert re.search(r"\b40 adapters, [12] resident \(at most 2\)", browser.find_element(By.ID, "counts").text)

    # typing a whole name picks that adapter, and the same image is asked again
    search = browser.find_element(By.ID, "adapter")
    search.clear()
    search.send_keys("site-027")
    second = api_answer(server, "site-027", images["red"])
    assert second["predictions"] != first["predictions"]  # another head: picking the adapter matters
    check_bars(browser, second)
    for image, how in ((images["green"], "drop"), (images["blue"], "paste")):
        hand_over(browser, image, how)
        check_bars(browser, api_answer(server, "site-027", image))

    # the API's error, as its detail says it
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a picture")
    with open(broken, "rb") as f:
        r = httpx.post(f"{server}/v1/classify?adapter=site-027&top_k=5", files={"file": ("broken.png", f, "image/png")})
    assert r.status_code == 400
    browser.find_element(By.ID, "file").send_keys(str(broken))
    error = browser.find_element(By.ID, "error")
    wait_for(browser, lambda: error.is_displayed() and error.text == f"400: {r.json()['detail']}", "the error")
    assert browser.find_elements(By.CSS_SELECTOR, "#bars li") == []
    assert [u for u in requested_urls(browser) if urlparse(u).netloc != urlparse(server).netloc] == []


def test_swagger_ui_in_chromium_renders_offline_and_uploads(server, browser, images):
    from selenium.webdriver.common.by import By

    requested_urls(browser)  # forget the earlier pages' requests
    browser.get(f"{server}/docs")
    operation = "operations-default-classify_v1_classify_post"
    wait_for(browser, lambda: browser.find_elements(By.ID, operation), "Swagger UI to render the schema")
    block = browser.find_element(By.ID, operation)
    block.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    wait_for(browser, lambda: block.find_elements(By.CSS_SELECTOR, ".try-out__btn"), "Try it out")[0].click()
    block.find_element(By.CSS_SELECTOR, 'tr[data-param-name="adapter"] input').send_keys("site-005")
    block.find_element(By.CSS_SELECTOR, 'input[type="file"]').send_keys(str(images["red"]))  # the multipart field
    block.find_element(By.CSS_SELECTOR, ".execute").click()
    status = lambda: block.find_elements(By.CSS_SELECTOR, ".live-responses-table tr.response .response-col_status")  # noqa: E731
    wait_for(browser, lambda: status() and status()[0].text.strip() == "200", "Try it out's answer", block)
    body = block.find_element(By.CSS_SELECTOR, ".live-responses-table tr.response .response-col_description pre").text
    assert json.loads(body) == api_answer(server, "site-005", images["red"])
    assert [u for u in requested_urls(browser) if urlparse(u).netloc != urlparse(server).netloc] == []
