#!/usr/bin/env bash
# Both benchmarks at the reference setup (ViT-B/16 shapes, 224 px, synthetic JPEGs) on a GPU machine
# lent through the workplace's `device` tool, which has torch, transformers, peft and accelerate but
# not datasets or the server's packages, and no network. Two steps:
#
#   bash benchmarks/gpu.sh wheels    # here: the missing packages as Python 3.12 wheels into .whl/ (git-ignored)
#   bash benchmarks/gpu.sh run       # there, with .whl carried: figures in $OUT (or ./gpu-bench)
#
# The wheels are the versions installed here (a combination the test suite passes with).
# Budget: about 15 minutes of device time for both runs.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-run}" in
wheels)
    pins=$(python - <<'EOF'
from importlib.metadata import version
names = ["datasets", "dill", "multiprocess", "fastapi", "starlette", "uvicorn", "python-multipart",
         "pydantic", "pydantic-core", "annotated-types", "typing-inspection"]
print(" ".join(f"{n}=={version(n)}" for n in names))
EOF
)
    mkdir -p .whl
    # shellcheck disable=SC2086
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $pins
    ls -1 .whl
    ;;
run)
    out=${OUT:-gpu-bench}
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/device.txt"
    python3 -c "import torch, transformers, peft, accelerate, datasets; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, \
'datasets', datasets.__version__)" | tee -a "$out/device.txt"
    python3 benchmarks/inference.py --model vit-b16 --images 512 --requests 2000 --repeats 30 2>&1 \
        | tee "$out/inference.log" | grep -E '^\||^ViT|GPU' || true
    python3 benchmarks/input_pipeline.py --model vit-b16 --files 6000 --batches 60 --train-steps 120 2>&1 \
        | tee "$out/input_pipeline.log" | grep -E '^\||cache build|first batch' || true
    ;;
*)
    echo "usage: bash benchmarks/gpu.sh wheels|run" >&2
    exit 2
    ;;
esac
