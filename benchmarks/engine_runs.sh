#!/usr/bin/env bash
# The README's CPU speed tables: benchmarks/engine.py in float32 and run as the CI-class AVX2 CPU,
# T = 0 (every row) and then T = 1 (the auto rows, every output run to full length: --ignore-eos, and
# twice the prompts: each row samples its own text, so a cell's ratio also varies with what was sampled),
# the two machines at once, one per core. On an AVX2-only CPU (the CI class itself) there is no proxy
# to run: T = 0 and then T = 1 run alone.
#   EX=path/to/drafter,... bash benchmarks/engine_runs.sh   # EX: extra drafter folders to run beside the shipped ones
#   RUNS=t1 bash benchmarks/engine_runs.sh                   # only the T = 1 pair (default: "t0 t1")
# Needs TAPS_DATA_DIR (e.g. ../shared/data). Writes benchmarks/results/amd-epyc-zen4-*.json (rename for
# another machine); the README tables come from `python benchmarks/tables.py RESULT.json --t1 RESULT-T1.json`.
set -euo pipefail
out=${RESULTS:-benchmarks/results}
name=${MACHINE:-amd-epyc-zen4}
common=(--dtype float32 --threads 1 --max-new-tokens 64)
[ -n "${EX:-}" ] && common+=(--drafters "$EX")
args() {  # sets extra and suffix for one run
  case $1 in
    t0) extra=(--prompts 4); suffix= ;;
    t1) extra=(--prompts 8 --temperature 1 --rows "[auto]" --ignore-eos); suffix=-T1 ;;
    *) echo "engine_runs.sh: unknown run '$1' in RUNS (use t0, t1)" >&2; exit 2 ;;
  esac
}
if grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
  for run in ${RUNS:-t0 t1}; do
    args "$run"
    python benchmarks/engine.py "${common[@]}" "${extra[@]}" --out "$out/$name-float32$suffix.json" & a=$!
    python benchmarks/engine.py "${common[@]}" "${extra[@]}" --emulate-avx2 --out "$out/$name-as-avx2-float32$suffix.json" & b=$!
    wait "$a"; wait "$b"  # each wait returns that run's status: a failed run stops the script
  done
else  # an AVX2-only CPU is the CI class itself: no proxy to run, so T = 0 and T = 1 run one after the
  # other (side by side they share the memory bus, which bounds a CPU decoding step there)
  for run in ${RUNS:-t0 t1}; do
    args "$run"
    python benchmarks/engine.py "${common[@]}" "${extra[@]}" --out "$out/$name-float32$suffix.json"
  done
fi
