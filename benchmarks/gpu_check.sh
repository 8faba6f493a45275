#!/usr/bin/env bash
# The GPU engine's checks, as one prepared script for a lent GPU machine (nothing here runs in CI).
#
# Before the session, here (see ../shared/tools/device/prepare and the device tool's README):
#   ../shared/tools/device/prepare slim && ../shared/tools/device/prepare pack --data
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform any -d .whl pytest pluggy iniconfig packaging
# Then send the parts in the printed order, and last (carry .device/final and .whl):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#   source .device/final/unpack.sh && taps setup && bash benchmarks/gpu_check.sh
# and `prepare restore` before any commit.
#
# Writes under $OUT (default ./gpu-out): the GPU's name, the CUDA tests' log (graphs vs eager,
# float32 losslessness, the bf16 match rate), the engine benchmark as markdown and JSON, and the
# CPU-side spec/model tests run with this machine's torch (the oldest torch the package admits).
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
timeout 180 python3 -m pytest -q -s -m gpu tests/gpu 2>&1 | tee "$out/pytest-gpu.log"
timeout 300 python3 benchmarks/engine.py --device cuda --prompts 2 --max-new-tokens 128 \
    --out "$out/engine-cuda.json" 2>&1 | tee "$out/engine-cuda.md"
timeout 90 python3 -m pytest -q -x -p no:cacheprovider tests/spec tests/models 2>&1 | tail -5 | tee "$out/pytest-cpu.log"
# HF generate with a static cache + torch.compile, last: compiling may take minutes
timeout 150 python3 benchmarks/engine.py --device cuda --prompts 2 --max-new-tokens 128 --compile --rows none \
    --out "$out/engine-cuda-compile.json" 2>&1 | tee "$out/engine-cuda-compile.md"
