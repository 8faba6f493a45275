#!/usr/bin/env bash
# The training issue's drafters, trained online on a lent GPU machine, as one prepared script
# (nothing here runs in CI; `DEVICE=cpu` with a tiny BUDGET checks the commands on a CPU).
#
# Before the session, here: as in benchmarks/gpu_check.sh, but pack the chat corpus too:
#   ../shared/tools/device/prepare slim && ../shared/tools/device/prepare pack --sharegpt --data
# Then send the parts in the printed order, the drafters' weights in a call of their own (`slim` leaves
# them behind; docs/gpu.md, "The next lent GPU", gives the calls), and last (carry .device/final):
#   cp -r /tmp/keep/drafters/. src/taps/drafters/smollm2-135m/ && source .device/final/unpack.sh && taps setup && BUDGET=500 bash benchmarks/gpu_train.sh
# `prepare restore` before any commit; then unpack each tar into src/taps/drafters/smollm2-135m/
# where `taps eval` shows it beats the shipped drafter.
#
# `taps train --online`: the frozen target makes each batch's features on the GPU; no shards. The
# replies are the corpora's own (regenerating tens of millions of tokens of the target's replies
# would take hours at the ~5k tok/s measured for batched HF generate on an H200). Planned budgets:
# chat the whole ShareGPT corpus (~13.7M tokens at 1024 tokens a thread) x 3 epochs, math the whole
# corpus (4.13M) x 6, mixed 20M tokens x 2. The lease is short, so RUNS go in order, each fitted
# with `--time-limit` to an equal share of the BUDGET seconds left among the runs that can still get
# MIN_TRAIN seconds each (OVERHEAD per run is kept for loading, data and the held-out tau); the
# earliest runs come first, the rest are skipped.
# Each drafter comes back as one tar under $OUT: its weights, config, card (device, tokens, epochs,
# wall time, losses, held-out tau) and training log.
# INIT=1 goes on from each shipped drafter of the same name (`taps train --init`, lr INIT_LR, default
# 5e-4, a choice not yet measured) instead of starting from scratch: the lease adds to its tokens.
# PROFILE=1 first profiles 8 online steps of each method (`taps train --profile`): the phase table
# (batch, target features, loss, backward, optimizer; device ms) goes to the summary, the operator
# tables to $OUT/profile-{eagle2,hass}.md; it takes the runs' time, about a minute in all.
# Batches: 16384 tokens. The first H200 run (2026-11-28) used 65536: 87-235 steps in 40-135 s at
# 92-154k tokens/s, and every drafter trailed the CPU-trained ones it would replace (eagle2-math:
# final loss 0.63 after 177 steps against 0.35 after 3159 steps of 4096 tokens); in a lease of
# minutes the number of optimizer steps, not tokens, is what is short.
set -uo pipefail
out=${OUT:-gpu-out}
work=${WORK:-$(dirname "$(mktemp -u)")/taps-train}
budget=${BUDGET:-500}
overhead=${OVERHEAD:-45}
min_train=${MIN_TRAIN:-60}
device=${DEVICE:-cuda}
# math and mixed first: the chat pair has had its GPU lease (41M / 16.6M tokens, 2026-12-04), and a
# fourth pass over ShareGPT's replies left eagle2-chat level (docs/drafters.md, 2026-12-06)
runs=(${RUNS:-hass-math eagle2-math hass-mixed eagle2-mixed eagle2-chat hass-chat})
begin=$(date +%s)
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1
# going on from the shipped drafters (INIT) needs their weights: stop now if they did not come
[ -z "${INIT:-}" ] || bash benchmarks/drafter_weights.sh gpu_train.sh || exit 2
if [ -n "${PROFILE:-}" ]; then  # where a step's time goes, per phase, for each method (8 steps each)
  for method in eagle2 hass; do
    timeout 120 python3 -m taps.cli train --online --device "$device" --corpus math --replies corpus \
        --tokens 2000000 --method "$method" --align-steps 3 --batch-tokens "${BATCH_TOKENS:-16384}" \
        --draft-vocab 8192 --threads "${THREADS:-4}" --max-steps 8 --profile "$out/profile-$method.md" \
        --out "$work/profile-$method" 2>&1 | grep -E '^\||tokens/s' | tee -a "$out/summary.txt"
  done
fi
for i in "${!runs[@]}"; do
  name=${runs[$i]}
  method=${name%%-*} corpus=${name#*-}
  left=$(( budget - ($(date +%s) - begin) ))
  fit=$(( left / (overhead + min_train) )); pending=$(( ${#runs[@]} - i ))
  [ "$fit" -gt "$pending" ] && fit=$pending  # the runs that still get MIN_TRAIN, earliest first
  if [ "$fit" -lt 1 ]; then echo "$name: skipped ($left s left)" | tee -a "$out/summary.txt"; continue; fi
  share=$(( (left - overhead * fit) / fit ))
  case $corpus in
    chat) budget_args=(--tokens "${CHAT_TOKENS:-100000000}" --epochs "${CHAT_EPOCHS:-3}") ;;
    math) budget_args=(--tokens "${MATH_TOKENS:-100000000}" --epochs "${MATH_EPOCHS:-6}") ;;
    *) budget_args=(--tokens "${TOKENS:-20000000}" --epochs "${EPOCHS:-2}") ;;
  esac
  start_args=(--lr 1e-3)
  [ -n "${INIT:-}" ] && start_args=(--init "$name" --lr "${INIT_LR:-5e-4}")  # on from the shipped one
  start=$(date +%s)
  timeout $(( left - 5 )) python3 -m taps.cli train --online --device "$device" --corpus "$corpus" \
      --replies corpus "${budget_args[@]}" --time-limit "$share" --method "$method" --align-steps 3 \
      --batch-tokens "${BATCH_TOKENS:-16384}" "${start_args[@]}" --draft-vocab 8192 --heldout-prompts 8 \
      --threads "${THREADS:-4}" --checkpoint-every 100000 --out "$work/$name" > "$work/$name.log" 2>&1
  status=$?
  echo "$name: exit $status after $(( $(date +%s) - start )) s (time limit $share s);" \
      "$(grep -o '[0-9]* steps in [0-9.]* s: [0-9]* tokens/s' "$work/$name.log");" \
      "$(grep -o 'steps fit ([0-9.]* epochs)' "$work/$name.log"); $(grep -o 'held-out tau [0-9.]*' "$work/$name.log")" \
      | tee -a "$out/summary.txt"
  files=("$name.log"); [ -d "$work/$name" ] && files+=("$name")
  tar -C "$work" -cf "$out/$name.tar" "${files[@]}"
done
echo "gpu_train.sh: $(( $(date +%s) - begin )) s" | tee -a "$out/summary.txt"
