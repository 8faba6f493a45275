"""bf16 attention against float64 attention on a CPU, side by side in one process.

    python benchmarks/attention_dtype.py [--target smollm2-135m] [--threads 1] [--contexts 300,1000]
        [--repeats 15] [--chains 20]

Loads the target once in bf16 and runs it over caches kept (and attended) in bf16, as with
`--attention model`, in float32, and in float64, the default on a CPU
(`taps.models.padded.attention_dtype`).
Prints, for each `--contexts` length, the median ms of a 1-token forward (a plain step) and of a
6-token chain (a verification), logits included, the dtypes interleaved round by round so that a
slow spell of a shared machine slows both alike; then the prefill of the longest context in each.
Then exactness: for `--chains` random contexts, whether each row of a 6-token chain gives the bits
of the same token run as a plain step after the rows before it (what bf16 speculative decoding's
equality with plain decoding rests on), attending in bf16, float32 and float64; and how many of 64
lone rows the down projection's kernel computes apart (`taps.models.packed.exact_row_range`).
Nothing here is an assertion; the tests hold what must hold
(`tests/models/test_attention.py`, `tests/test_default_target.py`).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from taps.models.catalog import load_target
from taps.models.packed import rows_apart

DTYPES = {"bf16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}
CHAIN = 6


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1000


def step_ms(model, context: torch.Tensor, n: int, repeats: int) -> dict[str, float]:
    """Median ms of an n-token forward (plus logits) on top of `context`, per attention dtype."""
    caches = {}
    for name, dtype in DTYPES.items():
        caches[name] = model.new_cache(len(context) + n, dtype)
        model(context, caches[name])
    start = len(context)
    tokens, positions = context[:n], torch.arange(start, start + n)
    mask = torch.ones(n, n, dtype=torch.bool).tril() if n > 1 else None
    times: dict[str, list[float]] = {name: [] for name in DTYPES}
    for _ in range(repeats + 1):  # the first round warms up
        for name, cache in caches.items():
            cache.length = start
            times[name].append(timed(lambda c=cache: model.logits(model(tokens, c, positions, mask))))
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def chain_matches(model, context: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether every row of a CHAIN-token pass equals the same tokens run one by one."""
    ids, start = context[: len(context) - CHAIN], len(context) - CHAIN
    cache = model.new_cache(len(context), dtype)
    model(ids, cache)
    steps = torch.cat([model(context[start + i : start + i + 1], cache) for i in range(CHAIN)])
    cache = model.new_cache(len(context), dtype)
    model(ids, cache)
    mask = torch.ones(CHAIN, CHAIN, dtype=torch.bool).tril()
    chain = model(context[start:], cache, torch.arange(start, start + CHAIN), mask)
    return torch.equal(steps, chain)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--contexts", default="300,1000")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--chains", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_target(args.target, dtype=torch.bfloat16, device="cpu", row_floor=False).model
    gen = torch.Generator().manual_seed(0)
    contexts = [int(c) for c in args.contexts.split(",")]
    tokens = torch.randint(100, 20000, (max(contexts),), generator=gen)
    print(
        "| context | forward | "
        + " | ".join(f"{name} attention ms" for name in DTYPES)
        + " | float64 / bf16 |"
    )
    print("|---|---|" + "---|" * (len(DTYPES) + 1))
    for length in contexts:
        for n in (1, CHAIN):
            ms = step_ms(model, tokens[:length], n, args.repeats)
            label = "1 token (plain step)" if n == 1 else f"{n}-token chain"
            cells = " | ".join(f"{ms[name]:.2f}" for name in DTYPES)
            print(f"| {length} | {label} | {cells} | {ms['float64'] / ms['bf16']:.2f}x |")
    prefill = {}
    for name, dtype in DTYPES.items():
        # a prompt attends in the model's dtype whatever the cache's (`taps.models.layers.Attention`)
        runs = [timed(lambda d=dtype: model(tokens, model.new_cache(len(tokens), d))) for _ in range(3)]
        prefill[name] = min(runs)
    print(
        f"\nprefill of {len(tokens)} tokens: {prefill['bf16']:.0f} ms with a bf16 cache, "
        f"{prefill['float64']:.0f} ms with a float64 one"
    )
    for name, dtype in DTYPES.items():
        starts = torch.randint(50 + CHAIN, max(contexts), (args.chains,), generator=gen).tolist()
        same = sum(chain_matches(model, tokens[:s], dtype) for s in starts)
        print(f"{name} attention: {same} of {args.chains} chains give every row a plain step's bits")
    print(lone_rows_apart(model))


def lone_rows_apart(model) -> str:
    """How many of 64 random rows the down projection's kernel gives other bits alone than together
    (in bf16 the difference survives rounding in few rows: why `exact_row_range` probes many)."""
    down = model.model.layers[0].mlp.down_proj
    x = torch.randn(64, down.in_features, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    apart = rows_apart(down.kernel, down.packed, x)
    return f"down projection ({down.in_features} inputs, {down.kernel.name}): {apart} of 64 lone rows apart"


if __name__ == "__main__":
    main()
