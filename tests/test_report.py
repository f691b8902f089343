"""The comparison report: Markdown + one self-contained HTML file, from real runs' metrics.json."""

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import read_metrics
from imgtune.compare.report import MethodRun, write_report

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "screenshot_report.sh"


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.urls = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [(tag, v) for k, v in attrs if k in ("src", "href", "data", "poster", "srcset") and v]


def assert_self_contained(page: str, expected_images: int) -> None:
    """Opens offline: no scripts, no stylesheet links, every image inline as a decodable PNG."""
    parsed = Collect()
    parsed.feed(page)
    assert "script" not in parsed.tags and "link" not in parsed.tags and "iframe" not in parsed.tags
    assert "@import" not in page and "url(" not in page
    assert len(parsed.urls) == expected_images
    for tag, url in parsed.urls:
        assert tag == "img" and url.startswith("data:image/png;base64,"), url[:80]
        image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert image.format == "PNG" and image.width > 200 and image.height > 150


def test_report_from_real_runs(tmp_path, lora_run):
    metrics = read_metrics(lora_run)
    runs = [MethodRun("lora", metrics), MethodRun("boft", error="boft cannot be applied with these settings: x")]
    md, page = write_report(
        tmp_path, runs, {"model": "tiny", "dataset": "colours", "methods": ["lora", "boft"]}, "a <title> & more"
    )
    text = md.read_text()
    row = next(l for l in text.splitlines() if l.startswith("| **lora** |"))
    assert f"{metrics['trainable_params']:,}" in row and f"{metrics['trainable_percent']:.3f}%" in row
    assert f"{metrics['validation']['accuracy']:.4f}" in row
    assert "| boft | failed: boft cannot be applied" in text
    assert "![lora: confusion matrix](plots/confusion_lora.png)" in text
    assert (tmp_path / "plots" / "confusion_lora.png").is_file()

    html = page.read_text()
    assert "<title>a &lt;title&gt; &amp; more</title>" in html  # user text is escaped
    assert_self_contained(html, expected_images=4 + 1)  # 2 curves, accuracy/params, per-class + one confusion matrix
    assert "failed: boft cannot be applied" in html


def test_report_with_nothing_finished(tmp_path):
    md, page = write_report(
        tmp_path, [MethodRun("lora", error="not finished: the comparison was interrupted")], {}, "t"
    )
    assert "| lora | not finished: the comparison was interrupted |" in md.read_text()
    assert_self_contained(page.read_text(), expected_images=0)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_a_real_browser(tmp_path, lora_run):
    """scripts/screenshot_report.sh: headless Chromium, offline, renders the page to a PNG."""
    _, page = write_report(tmp_path, [MethodRun("lora", read_metrics(lora_run))], {"model": "tiny"}, "browser check")
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(page), str(shot), "1000"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    image = Image.open(shot)
    assert image.width == 1000 and image.height > 1000  # table and figures laid out, blank tail trimmed
    grey = np.asarray(image.convert("L"))
    assert grey.std() > 10  # not a blank or error page
