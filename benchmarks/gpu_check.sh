#!/usr/bin/env bash
# The GPU engine's checks, as one prepared script for a lent GPU machine (nothing here runs in CI).
#
# Before the session, here (see ../shared/tools/device/prepare and the device tool's README):
#   ../shared/tools/device/prepare slim && ../shared/tools/device/prepare pack --data
# Then send the parts in the printed order, the drafters' weights in a call of their own (`slim` leaves
# them behind; docs/gpu.md, "The next lent GPU", gives the calls), and last (carry .device/final):
#   cp -r /tmp/keep/drafters/. src/taps/drafters/smollm2-135m/ && source .device/final/unpack.sh && taps setup && bash benchmarks/gpu_check.sh
# and `prepare restore` before any commit. The machine's image has pytest.
#
# Writes under $OUT (default ./gpu-out), within BUDGET seconds (default 400; each step is cut at
# what is left): the GPU's name, the CUDA tests' log (graphs vs eager, float32 losslessness, the
# bf16 match rate), the engine benchmark as markdown and JSON (and its per-prompt partial JSON if
# cut short), the CPU-side spec/model tests under this machine's torch (run beside the CUDA tests,
# on other cores), and, with COMPILE=1 and time left, HF generate with a static cache + torch.compile.
# PROMPTS: prompts per benchmark (default 4); BENCHMARKS: the engine's (default gsm8k,mt_bench; add
# gsm8k_8shot for ~1150-token prompts); TEST_CAP: seconds for the CUDA tests (default 150); LOOKUP=0
# drops the engine's `[auto + lookup]` rows (prompt lookup merged into each learned proposer's tree,
# the CPU default, not yet measured on a GPU). F64_ROWS (default "eagle2-mixed [auto"; empty: skip):
# with time left, a second engine run of those rows (and the baselines) attending in float64
# (`--attention float64`), what makes bf16 round alike on a CPU: its speed and its share of outputs
# equal to plain decoding beside the default's float32, so that one lease settles the default.
set -uo pipefail
out=${OUT:-gpu-out}
budget=${BUDGET:-400}
begin=$(date +%s)
left() { echo $(( budget - ($(date +%s) - begin) )); }
cap() { local l; l=$(left); echo $(( l < $1 ? l : $1 )); }  # a step's limit: its own, or what is left
mkdir -p "$out"
export PYTHONUNBUFFERED=1
# the shipped drafters' weights travel apart from the tree: stop now if they did not come
bash benchmarks/drafter_weights.sh gpu_check.sh || exit 2
# the machine heads the CUDA tests' log: at most 8 files come back from a lent machine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/pytest-gpu.log"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__)" | tee -a "$out/pytest-gpu.log"
cores=$(nproc)
OMP_NUM_THREADS=4 CUDA_VISIBLE_DEVICES= timeout 150 taskset -c $(( cores - 4 ))-$(( cores - 1 )) \
    python3 -m pytest -q -p no:cacheprovider tests/spec tests/models > "$out/pytest-cpu.log" 2>&1 &
timeout "$(cap "${TEST_CAP:-150}")" python3 -m pytest -q -s -p no:cacheprovider -m gpu tests/gpu 2>&1 \
    | tee -a "$out/pytest-gpu.log"
wait
tail -3 "$out/pytest-cpu.log"
timeout "$(cap 300)" python3 benchmarks/engine.py --device cuda --prompts "${PROMPTS:-4}" --max-new-tokens 128 \
    --benchmarks "${BENCHMARKS:-gsm8k,mt_bench}" $([ "${LOOKUP:-1}" = 0 ] || echo --lookup) \
    --out "$out/engine-cuda.json" 2>&1 | tee "$out/engine-cuda.md"
f64_rows=${F64_ROWS-eagle2-mixed [auto}
if [ -n "$f64_rows" ] && [ "$(left)" -gt 90 ]; then  # the bf16 equality bar's other candidate
  timeout "$(cap 200)" python3 benchmarks/engine.py --device cuda --prompts "${PROMPTS:-4}" --max-new-tokens 128 \
      --benchmarks "${BENCHMARKS:-gsm8k,mt_bench}" --attention float64 --rows "$f64_rows" \
      --out "$out/engine-cuda-f64.json" 2>&1 | tee "$out/engine-cuda-f64.md"
fi
if [ -n "${COMPILE:-}" ] && [ "$(left)" -gt 90 ]; then  # compiling may take minutes: last, asked for
  timeout "$(cap 150)" python3 benchmarks/engine.py --device cuda --prompts 1 --max-new-tokens 128 --compile \
      --rows none --out "$out/engine-cuda-compile.json" 2>&1 | tee "$out/engine-cuda-compile.md"
fi
echo "gpu_check.sh: $(( $(date +%s) - begin )) s"
