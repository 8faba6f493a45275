#!/usr/bin/env bash
# The README's CPU speed tables: benchmarks/engine.py in float32 and run as the CI-class AVX2 CPU,
# T = 0 (every row) and then T = 1 (the auto rows), the two machines at once, one per core.
#   EX=path/to/drafter,... bash benchmarks/engine_runs.sh   # EX: extra drafter folders to run beside the shipped ones
# Needs TAPS_DATA_DIR (e.g. ../shared/data). Writes benchmarks/results/amd-epyc-zen4-*.json (rename for
# another machine); the README tables come from `python benchmarks/tables.py RESULT.json --t1 RESULT-T1.json`.
set -euo pipefail
out=${RESULTS:-benchmarks/results}
name=${MACHINE:-amd-epyc-zen4}
common=(--dtype float32 --threads 1 --prompts 4 --max-new-tokens 64)
[ -n "${EX:-}" ] && common+=(--drafters "$EX")
python benchmarks/engine.py "${common[@]}" --out "$out/$name-float32.json" & a=$!
python benchmarks/engine.py "${common[@]}" --emulate-avx2 --out "$out/$name-as-avx2-float32.json" & b=$!
wait "$a"; wait "$b"  # each wait returns that run's status: a failed run stops the script
t1=(--temperature 1 --rows "[auto]")
python benchmarks/engine.py "${common[@]}" "${t1[@]}" --out "$out/$name-float32-T1.json" & a=$!
python benchmarks/engine.py "${common[@]}" "${t1[@]}" --emulate-avx2 --out "$out/$name-as-avx2-float32-T1.json" & b=$!
wait "$a"; wait "$b"
