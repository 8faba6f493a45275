#!/usr/bin/env bash
# The training issue's drafters, trained online on a lent GPU machine, as one prepared script
# (nothing here runs in CI; `DEVICE=cpu` with tiny budgets checks the commands on a CPU).
#
# Before the session, here: as in benchmarks/gpu_check.sh, but pack the chat corpus too:
#   ../shared/tools/device/prepare slim && ../shared/tools/device/prepare pack --sharegpt --data
# Then send the parts in the printed order, and last (carry .device/final):
#   source .device/final/unpack.sh && taps setup && METHODS=eagle2 bash benchmarks/gpu_train.sh
# and at once, on the still-warm machine, the same with METHODS=hass (a call runs at most 10 minutes).
# `prepare restore` before any commit; then unpack each tar into src/taps/drafters/smollm2-135m/
# where `taps eval` shows it beats the shipped drafter.
#
# `taps train --online`: the frozen target makes each batch's features on the GPU; no shards. The
# replies are the corpora's own: regenerating 20M tokens of the target's replies would take hours at
# the ~5k tok/s measured for batched HF generate on an H200. Budgets: chat and mixed TOKENS (20M) x 1
# epoch; math is the whole corpus (4.13M tokens) x MATH_EPOCHS (5). Each drafter comes back as one tar
# under $OUT (its weights, config and card: device, tokens, epochs, wall time, losses, held-out tau),
# with its training log.
set -uo pipefail
out=${OUT:-gpu-out}
work=${WORK:-$(dirname "$(mktemp -u)")/taps-train}
tokens=${TOKENS:-20000000}
math_tokens=${MATH_TOKENS:-5000000}
math_epochs=${MATH_EPOCHS:-5}
device=${DEVICE:-cuda}
mkdir -p "$out" "$work"
export PYTHONUNBUFFERED=1
for method in ${METHODS:-eagle2 hass}; do
  for corpus in ${CORPORA:-math chat mixed}; do
    name=$method-$corpus
    if [ "$corpus" = math ]; then budget=(--tokens "$math_tokens" --epochs "$math_epochs")
    else budget=(--tokens "$tokens" --epochs 1); fi
    start=$(date +%s)
    taps train --online --device "$device" --corpus "$corpus" --replies corpus "${budget[@]}" \
        --method "$method" --align-steps 3 --batch-tokens "${BATCH_TOKENS:-65536}" --lr 1e-3 \
        --draft-vocab 8192 --threads "${THREADS:-4}" --out "$work/$name" > "$out/$name.log" 2>&1
    status=$?
    echo "$name: exit $status after $(( $(date +%s) - start )) s; $(grep -o 'held-out tau [0-9.]*' "$out/$name.log")"
    [ $status -eq 0 ] && tar -C "$work" -cf "$out/$name.tar" "$name"
  done
done
