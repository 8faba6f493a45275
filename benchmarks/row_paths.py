"""Where the target's CPU matmul kernels change path with the row count, and what that costs.

    python benchmarks/row_paths.py [--target smollm2-135m] [--dtype auto|float32|bfloat16] [--threads 2]

Exact verification needs each row of a tree's forward to get the bits of the plain step at its
place; a kernel may compute a lone row, or products of many rows, by another path. Prints, on this
machine, in the dtype the target runs in:
1. for each weight shape of the target (as `load_target` packs it: q/k/v and gate/up fused, the LM
   head), the row counts from 1 to PROBE_ROWS whose products give some row other bits than plain
   steps (the row alone, or padded to two rows where a lone row is computed apart), and the
   `RowRange` that `taps.models.packed.exact_row_range` keeps;
2. a prompt's prefill read whole (as taps reads prompts: `whole_matmuls`) and in chunks of that range
   (as it verifies trees), for a few prompt lengths;
3. the machine's memory read rate against the rate a 1-token forward's matmuls stream the weights
   (from torch.profiler): how far a plain step is from its bound.
Nothing here is an assertion; `tests/models/test_packed.py` holds what must hold.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import torch

import taps.models.target as target_module
from taps.errors import TapsError
from taps.models import packed
from taps.models.catalog import load_target
from taps.models.packed import PackedLinear, RowRange, exact_row_range, matmul_rows, plain_steps

PROMPTS = (64, 256, 1150)


def weights(model) -> dict[tuple[int, int], object]:
    """One packed matmul per weight shape [in, out] of the target."""
    shapes = {}
    for m in model.modules():
        if isinstance(m, PackedLinear) and m.packed is not None:
            shapes[(m.in_features, m.out_features)] = (m.kernel, m.packed)
    first = model.model.layers[0]  # every layer has the same shapes
    for fused in (first.self_attn.qkv, first.mlp.gate_up):
        if fused is not None:
            shapes.setdefault(_shape_of(fused, model), (fused.kernel, fused.members[0]))
    return shapes


def _shape_of(fused, model) -> tuple[int, int]:
    x = torch.zeros(1, model.shape.hidden_size, dtype=model.dtype)
    return (model.shape.hidden_size, fused(x).shape[-1])


def rows_apart_by_count(kernel, weight, in_features: int, dtype, floor: int) -> dict[int, int]:
    """{row count: rows of a product of that many random rows with other bits than plain steps}."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(packed.PROBE_ROWS, in_features, generator=gen).to(dtype)
    padded = RowRange(floor, None)
    steps = plain_steps(kernel, weight, x, floor)
    apart = {}
    for m in range(1, len(x) + 1):
        out = matmul_rows(kernel, x[:m], weight, None, padded)
        differ = sum(not torch.equal(out[i], steps[i]) for i in range(m))
        if differ:
            apart[m] = differ
    return apart


def spans(apart: dict[int, int]) -> str:
    """{33: 1, 34: 2, ...} as '33-64 (1-2 rows)': runs of consecutive row counts, rows apart in each."""
    out, counts = [], sorted(apart)
    while counts:
        end = 0
        while end + 1 < len(counts) and counts[end + 1] == counts[end] + 1:
            end += 1
        run, counts = counts[: end + 1], counts[end + 1 :]
        rows = sorted({apart[m] for m in run})
        label = f"{run[0]}" if len(run) == 1 else f"{run[0]}-{run[-1]}"
        many = f"{rows[0]}" if len(rows) == 1 else f"{rows[0]}-{rows[-1]}"
        out.append(f"{label} ({many} rows)")
    return ", ".join(out) or "none"


def prefill_ms(model, n: int, whole: bool, repeats: int = 3) -> float:
    """Median ms to read an n-token prompt, whole or in the chunks a verification would use."""
    tokens = torch.randint(0, 1000, (n,), generator=torch.Generator().manual_seed(n))
    original = target_module.whole_matmuls
    if not whole:  # the target enters whole_matmuls for a prompt: take it away for this measurement
        target_module.whole_matmuls = contextlib.nullcontext
    try:
        times = []
        for _ in range(repeats):
            cache = model.new_cache(n + 8)
            start = time.perf_counter()
            model.logits(model(tokens, cache)[-1:])
            times.append((time.perf_counter() - start) * 1000)
    finally:
        target_module.whole_matmuls = original
    return statistics.median(times)


def read_gb_s() -> float:
    x = torch.randn(64_000_000)  # 256 MB, far past any cache
    x.sum()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - start)
    return x.numel() * 4 / statistics.median(times) / 1e9


def streamed_gb_s(model) -> tuple[float, float]:
    """(GB/s the 1-token forward's packed matmuls stream the weights at, their share of its time)."""
    from torch.profiler import profile

    cache = model.new_cache(300)
    model(torch.arange(200), cache)
    token = torch.tensor([5])

    def step():
        model.logits(model(token, cache))
        cache.length = 200

    for _ in range(3):
        step()
    with profile() as prof:
        for _ in range(10):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if "linear" in e.key or "mm" in e.key)
    size = sum(p.numel() * p.element_size() for p in model.parameters())  # the tied head counts once
    return size / (matmul / 10 / 1e6) / 1e9, matmul / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    model = load_target(args.target, dtype=dtype, device="cpu").model
    if not model.packed:
        raise TapsError(f"the target is not packed here ({model.dtype}): no packed kernels to probe")
    print(f"{args.target}, {model.dtype}, {torch.get_num_threads()} thread(s)\n")
    print("| weight [in, out] | row counts with rows apart from plain steps | kept range |")
    print("|---|---|---|")
    ceilings = []
    with torch.inference_mode():
        for (n_in, n_out), (kernel, weight) in sorted(weights(model).items()):
            kept = exact_row_range(kernel, n_in, n_out, model.dtype)
            ceilings.append(kept.ceiling)
            apart = rows_apart_by_count(kernel, weight, n_in, model.dtype, kept.floor)
            shown = spans(apart)
            print(f"| [{n_in}, {n_out}] | {shown} | floor {kept.floor}, ceiling {kept.ceiling} |")
        print(f"\n| prompt tokens | read whole ms | in chunks of <= {min(ceilings)} ms | chunks / whole |")
        print("|---|---|---|---|")
        for n in PROMPTS:
            whole, chunked = prefill_ms(model, n, True), prefill_ms(model, n, False)
            print(f"| {n} | {whole:.1f} | {chunked:.1f} | {chunked / whole:.2f}x |")
        rate, share = streamed_gb_s(model)
    print(
        f"\nmemory read: {read_gb_s():.1f} GB/s; a 1-token forward's matmuls streamed the weights at "
        f"{rate:.1f} GB/s ({share:.0%} of its time)"
    )


if __name__ == "__main__":
    try:
        main()
    except TapsError as exc:
        sys.exit(f"row_paths.py: {exc}")
