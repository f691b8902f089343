#!/usr/bin/env bash
# Render a comparison report (report.html) in headless Chromium and save a full-page PNG.
#   scripts/screenshot_report.sh RUN_DIR/report.html [OUT.png] [WIDTH]
# Needs Debian's chromium (apt-get install -y chromium). Nothing is fetched from the network:
# the report is self-contained and the flags below keep Chromium from calling home.
set -euo pipefail
report=${1:?usage: $0 REPORT.html [OUT.png] [WIDTH]}
out=${2:-${report%.html}.png}
width=${3:-1280}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [[ -z "$browser" ]]; then
    echo "no chromium found: apt-get install -y chromium" >&2
    exit 3
fi
[[ -f "$report" ]] || { echo "no such report: $report" >&2; exit 2; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# A tall window captures the whole page: headless --screenshot takes the window, not the document.
height=${SCREENSHOT_HEIGHT:-$(python3 - "$report" "$width" <<'PY'
import re, sys
html = open(sys.argv[1], encoding="utf-8").read()
width = int(sys.argv[2])
# rough page height: ~40 px per table row / heading plus each image scaled to the content width
imgs = len(re.findall(r"<img ", html))
rows = len(re.findall(r"<tr", html)) + len(re.findall(r"<h[1-3]", html)) + len(re.findall(r"<dt>", html))
print(min(400 + rows * 40 + imgs * int(min(width, 1200) * 0.55), 30000))
PY
)}
"$browser" --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$profile" \
    --window-size="$width,$height" --screenshot="$(realpath -m "$out")" "file://$(realpath "$report")" 2>/dev/null
# cut the blank space below the page (the window was sized generously); skipped without Pillow
python3 - "$out" <<'PY' || true
import sys
from PIL import Image, ImageOps
image = Image.open(sys.argv[1])
box = ImageOps.invert(image.convert("L")).getbbox()
if box:
    image.crop((0, 0, image.width, min(image.height, box[3] + 40))).save(sys.argv[1])
PY
echo "$out"
