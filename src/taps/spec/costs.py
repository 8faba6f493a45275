"""What verifying n tree tokens costs on this machine: the target's measured forward-time curve.

The tree budget (`taps.spec.budget`) weighs expected accepted tokens against this curve. Its shape
is a property of the hardware, not of the algorithm: on an AVX2 CPU in float32 a 24-token pass
cost ~3x a 1-token pass, on an avx512_bf16 CPU ~1.3x, on a GPU with graphs ~1.1x. So it is
measured once per machine, target, dtype, device, thread count and torch version, cached as JSON
under `TAPS_HOME/costs/`, and re-measured when it is older than `MAX_AGE_S` or any of those change.
"""

from __future__ import annotations

import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from taps.config import taps_home
from taps.device import machine_description, synchronize
from taps.files import read_measurement, write_measurement

SIZES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64)  # tree tokens incl. the root
CONTEXT = 256  # committed tokens under the measured passes (a typical mid-reply cache)
MAX_AGE_S = 7 * 24 * 3600
FORMAT = "taps-costs/3"  # 2: the raw medians are kept (the row floor reads them); 3: wide
# verifications in exact chunks where a kernel changes path (`taps.models.packed.exact_row_range`)
FLOOR_LIMIT = 8  # the largest row count small forwards are padded to (`row_floor`)
FLOOR_GAIN = 0.10  # ... where that forward is at least this much cheaper than a 1-token one


@dataclass(frozen=True)
class CostCurve:
    """Milliseconds of one verifying forward (forward + logits) over n = 1..max tokens, interpolated
    linearly between measured sizes; n = 1 is a plain decoding step."""

    sizes: tuple[int, ...]
    ms: tuple[float, ...]  # fitted non-decreasing (what the budget uses)
    measured: tuple[float, ...] = field(default=(), compare=False)  # the raw medians, where known

    @property
    def max_tokens(self) -> int:
        return self.sizes[-1]

    def __call__(self, n: int) -> float:
        if n <= self.sizes[0]:
            return self.ms[0]
        for (a, ca), (b, cb) in zip(zip(self.sizes, self.ms), zip(self.sizes[1:], self.ms[1:])):
            if n <= b:
                return ca + (cb - ca) * (n - a) / (b - a)
        return self.ms[-1] * n / self.sizes[-1]  # past the largest size: proportional

    def with_floor(self, rows: int) -> CostCurve:
        """The curve once forwards of fewer than `rows` tokens run their matmuls on `rows` rows
        (`TargetModel.set_row_floor`): they cost what `rows` tokens do, attention aside."""
        if rows <= 1:
            return self
        raw = list(self.measured or self.ms)
        floor_ms = CostCurve(self.sizes, tuple(raw))(rows)
        raw = [min(ms, floor_ms) if n <= rows else ms for n, ms in zip(self.sizes, raw)]
        return CostCurve(self.sizes, tuple(non_decreasing(raw)), tuple(raw))

    def table(self) -> list[float]:
        """cost(n) for n = 0..max_tokens (index 0 unused), for vectorised lookups."""
        return [0.0] + [self(n) for n in range(1, self.max_tokens + 1)]


def measure_curve(model, sizes: tuple[int, ...] = SIZES, rounds: int = 5) -> CostCurve:
    """Median time of a tree-masked forward plus logits for each size, on a CONTEXT-token cache.

    Sizes are visited round-robin (a burst of machine noise then hits every size a little, not one
    size a lot) and the medians are fitted with a non-decreasing curve: more tokens never cost less."""
    device = model.device
    cache = model.new_cache(CONTEXT + max(sizes))
    model(torch.randint(0, model.shape.vocab_size, (CONTEXT,), device=device), cache)
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for round_ in range(rounds + 1):  # round 0 warms up
        for n in sizes:
            tokens = torch.randint(0, model.shape.vocab_size, (n,), device=device)
            positions = torch.arange(CONTEXT, CONTEXT + n, device=device)
            mask = torch.ones(n, n, dtype=torch.bool, device=device).tril_() if n > 1 else None
            cache.length = CONTEXT
            start = time.perf_counter()
            model.logits(model(tokens, cache, positions, mask))
            synchronize(device)
            if round_:
                times[n].append((time.perf_counter() - start) * 1000)
    medians = [statistics.median(times[n]) for n in sizes]
    return CostCurve(tuple(sizes), tuple(non_decreasing(medians)), tuple(medians))


def row_floor(curve: CostCurve) -> int:
    """The row count a target's small forwards should run their matmuls on: the measured size up to
    FLOOR_LIMIT whose forward is cheapest, where it beats a 1-token forward by more than FLOOR_GAIN;
    else 1 (no padding). Read from the raw medians: the fitted curve never decreases."""
    raw = curve.measured or curve.ms
    best_ms, best = min((ms, n) for n, ms in zip(curve.sizes, raw) if n <= FLOOR_LIMIT)
    return best if best_ms < (1 - FLOOR_GAIN) * raw[0] else 1


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def settle_row_floor(model, cache_dir: Path | None = None, log=None) -> int:
    """Pad a CPU target's small forwards to the cheapest row count its cost curve shows (measured
    once per machine, see `load_or_measure`), and return that count."""
    floor = row_floor(load_or_measure(model, cache_dir, log))
    model.set_row_floor(floor)
    return floor


def non_decreasing(values: list[float]) -> list[float]:
    """The closest non-decreasing sequence in squared error (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for v in values:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, c2), (m1, c1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2])
    return [m for m, c in blocks for _ in range(c)]


def curve_key(model) -> dict:
    """Everything the curve depends on; a cached curve is reused only when all of it matches."""
    from taps.models.packed import packing_available

    return {
        "format": FORMAT,
        "machine": machine_description(model.device),
        "device": str(model.device),
        "target": model.fingerprint(),
        "layers": model.shape.num_layers,
        "dtype": str(model.dtype),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "packed": packing_available(),
        # the forward the loop calls: plain, padded to one row count, or CUDA graphs over buckets
        "forward": f"{type(model).__name__}:{getattr(model, 'exact_rows', 0)}" + _attention_note(model),
    }


def _attention_note(model) -> str:
    """Where the loop's forward attends in another dtype than the model's (`taps.models.padded`)."""
    attends = model.attention_dtype
    return "" if attends == model.dtype else f":attention {attends}"


def load_or_measure(model, cache_dir: Path | None = None, log=None) -> CostCurve:
    """The cached curve for this model and machine, or a fresh measurement (a few seconds) saved
    for next time; measured without the target's row floor, returned with it (`CostCurve.with_floor`).
    The note that it measures goes to `log`, by default standard error: standard output is the reply's
    (`taps generate > reply.txt`)."""
    key = curve_key(model)
    folder = cache_dir or taps_home() / "costs"
    floor = getattr(model, "row_floor", 1)
    saved = read_measurement(folder, key, MAX_AGE_S)
    if saved is not None:
        curve = CostCurve(tuple(saved["sizes"]), tuple(saved["ms"]), tuple(saved["measured"]))
        return curve.with_floor(floor)
    (log or _note)(
        f"[taps] measuring the target's forward cost for 1..{SIZES[-1]} tree tokens on {key['device']} "
        f"(once per machine; cached in {folder})"
    )
    with _without_row_floor(model, floor):
        curve = measure_curve(model)
    sizes, ms, measured = list(curve.sizes), list(curve.ms), list(curve.measured)
    write_measurement(folder, key, {"sizes": sizes, "ms": ms, "measured": measured})
    return curve.with_floor(floor)


@contextmanager
def _without_row_floor(model, floor: int):
    """The model with its matmuls on as many rows as given, for the measurement's duration."""
    if floor > 1:
        model.set_row_floor(1)
    try:
        yield model
    finally:
        if floor > 1:
            model.set_row_floor(floor)
