"""The target's CPU forward, fused against unfused, side by side in one process.

    python benchmarks/cpu_forward.py [--target smollm2-135m] [--threads 1] [--context 200] [--repeats 12]

Loads the target twice in float32: packed as `load_target` packs it (q/k/v and gate/up fused into one
oneDNN matmul each, `TargetModel.pack_for_cpu`) and packed without the fusing. Prints, for forwards of
1, 2, 4 and 8 tokens (a plain step and trees of 1-7 drafted nodes, logits included) on top of a
`--context`-token cache, the median ms of each, interleaved (one of each in turn, `--repeats` rounds),
so that a slow spell of a shared machine slows both alike. Then two exactness checks:
- whether the fused and unfused forwards give the same bits (8 tree tokens);
- how far the first of 8 tree tokens ends from the same token run alone (max abs difference of the
  final hidden state): the matmuls round a row alike whatever the row count, attention does not.
Nothing here is an assertion; the tests hold what must hold (`tests/models/test_packed.py`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from taps.errors import TapsError
from taps.models.catalog import resolve_target
from taps.models.packed import pack_linears
from taps.models.target import TargetModel

SIZES = (1, 2, 4, 8)


def forward(model: TargetModel, cache, tokens: torch.Tensor, start: int) -> torch.Tensor:
    """Tokens [n] as a causal tree on top of the first `start` cache slots; the cache is left as it was."""
    n = len(tokens)
    tree = torch.ones(n, n, dtype=torch.bool).tril() if n > 1 else None
    hidden = model(tokens, cache, positions=torch.arange(start, start + n), tree_mask=tree)
    model.logits(hidden)
    cache.length = start
    return hidden


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--context", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=12)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = resolve_target(args.target)
    models = {
        "unfused": pack_linears(TargetModel.from_dir(path, dtype=torch.float32)),
        "fused": TargetModel.from_dir(path, dtype=torch.float32).pack_for_cpu(),
    }
    gen = torch.Generator().manual_seed(0)
    context = torch.randint(0, 1000, (args.context,), generator=gen)
    tokens = torch.randint(0, 1000, (max(SIZES),), generator=gen)
    caches = {}
    for name, model in models.items():
        caches[name] = model.new_cache()
        model(context, caches[name])
    times = {(name, n): [] for name in models for n in SIZES}
    for _ in range(args.repeats):
        for n in SIZES:
            for name, model in models.items():
                start = time.perf_counter()
                forward(model, caches[name], tokens[:n], args.context)
                times[(name, n)].append((time.perf_counter() - start) * 1000)
    print(f"{args.target}, float32, {torch.get_num_threads()} thread(s), {args.context}-token context\n")
    print("| tokens | unfused ms | fused ms | fused / unfused |\n|---|---|---|---|")
    for n in SIZES:
        a, b = (statistics.median(times[(name, n)]) for name in ("unfused", "fused"))
        print(f"| {n} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
    tree = {name: forward(m, caches[name], tokens, args.context) for name, m in models.items()}
    alone = forward(models["fused"], caches["fused"], tokens[:1], args.context)
    print(f"\nfused == unfused, bit for bit (8 tree tokens): {torch.equal(tree['fused'], tree['unfused'])}")
    gap = float((tree["fused"][0] - alone[0]).abs().max())
    print(f"first of 8 tree tokens vs the same token alone, max abs gap in the last hidden state: {gap:.2e}")


if __name__ == "__main__":
    try:
        main()
    except TapsError as exc:  # an unknown or not set-up target: one line, not a traceback
        sys.exit(f"cpu_forward.py: {exc}")
