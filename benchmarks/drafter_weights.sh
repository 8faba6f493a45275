#!/usr/bin/env bash
# Exits 2, naming them, where a shipped drafter folder has no weights: `prepare slim` untracks them,
# so they reach a lent GPU machine only when carried (docs/gpu.md, "The next lent GPU"). The GPU
# scripts call this first, so that a missing carry stops them at once, not after the lease's minutes.
cd "$(dirname "$0")/.." || exit 2
missing=$(for c in src/taps/drafters/*/*/config.json; do
  [ -f "${c%config.json}model.safetensors" ] || echo "${c%/config.json}"
done)
[ -z "$missing" ] && exit 0
echo "${1:-drafter_weights.sh}: no weights in" $missing "- send src/taps/drafters/smollm2-135m first (docs/gpu.md, \"The next lent GPU\")" >&2
exit 2
