"""Markdown tables from `benchmarks/engine.py --out` files, as the README shows them.

    python benchmarks/tables.py RESULT.json [--t1 RESULT-T1.json] [--compact] [--ci]
        [--pair "ROW A" "ROW B"]

Every figure is read from the JSON files (which hold every output and per-prompt time), so a README
table can always be traced to the run that made it: ratios are tok/s over taps plain decoding on the
same prompts in the same run; `--t1` adds the ratios of a second run at T = 1 of the same rows.
`--ci` adds a 95% bootstrap interval to each row's overall ratio, and `--pair A B` prints row A's
tok/s over row B's with its interval (`paired_interval`): how far the prompts, and at T > 0 the
samples drawn, leave a ratio or a difference between two rows open.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from taps.eval.intervals import ratio_interval

BENCH_NAMES = {
    "gsm8k": "GSM8K",
    "mt_bench": "MT-Bench",
    "math500": "MATH-500",
    "svamp": "SVAMP",
    "gsm8k_8shot": "GSM8K 8-shot",
}


def load(path: str) -> dict:
    """One engine result; a file that is not one is a one-line error."""
    try:
        result = json.loads(Path(path).read_text())
        result["meta"], result["rows"]
    except (OSError, ValueError, KeyError) as exc:
        raise SystemExit(
            f"error: {path} is not an engine result ({exc}); make one with benchmarks/engine.py --out"
        ) from None
    return result


def benchmarks_of(result: dict) -> list[str]:
    """The benchmark of each prompt, in run order (engine.py runs `prompts_per_benchmark` of each)."""
    meta = result["meta"]
    return [b for b in meta["benchmarks"].split(",") for _ in range(meta["prompts_per_benchmark"])]


def ratio(result: dict, row: str, bench: str | None) -> float:
    """tok/s of `row` over taps plain on the prompts of `bench` (None: all prompts)."""

    def tok_s(r: dict) -> float:
        picked = [i for i, b in enumerate(benchmarks_of(result)) if bench in (None, b)]
        return sum(len(r["outputs"][i]) for i in picked) / sum(r["seconds"][i] for i in picked)

    return tok_s(result["rows"][row]) / tok_s(result["rows"]["taps plain"])


def paired_interval(result: dict, row: str, base: str = "taps plain") -> tuple[float, float, float]:
    """tok/s of `row` over `base` with a 95% bootstrap interval over the prompts, each keeping both
    rows' tokens and seconds (the engine runs every row on a prompt before the next prompt), resampled
    within each benchmark (`taps.eval.intervals`): (ratio, low, high)."""
    a, b = result["rows"][row], result["rows"][base]
    interval = ratio_interval(
        [len(o) for o in a["outputs"]],
        a["seconds"],
        [len(o) for o in b["outputs"]],
        b["seconds"],
        strata=benchmarks_of(result),
    )
    return interval.value, interval.low, interval.high


def fmt(x: float | None, suffix: str = "") -> str:
    return "–" if x is None else f"{x:.2f}{suffix}"


def full_table(result: dict, t1: dict | None, ci: bool = False) -> str:
    """Per benchmark and overall ratios (with `ci`, the overall one's 95% interval), the T = 1 ratios,
    and the per-step figures."""
    benches = list(dict.fromkeys(benchmarks_of(result)))
    names = [BENCH_NAMES.get(b, b) for b in benches]
    t1_head = f" | T = 1: {' / '.join(names)}" if t1 else ""
    # runs since 2026-12-05 time the prefill apart: the speed-up after the prompt, and what it cost
    prefill = "decode_tok_s" in result["rows"]["taps plain"]
    prefill_head = " | prefill s | after the prompt" if prefill else ""
    head = (
        f"| decoder | tok/s | {' | '.join(names)} | all{t1_head} | tau | nodes / step | draft ms "
        f"| verify ms{prefill_head} | output == plain |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    n = len(benchmarks_of(result))
    for name, row in result["rows"].items():
        if "error" in row:
            continue
        cells = [f"{row['tok_s']:.1f}", *(fmt(ratio(result, name, b), "x") for b in benches)]
        cells.append(f"**{ratio(result, name, None):.2f}x**" + (interval_text(result, name) if ci else ""))
        if t1:
            in_t1 = name in t1["rows"] and "error" not in t1["rows"][name]
            cells.append(" / ".join(fmt(ratio(t1, name, b) if in_t1 else None, "x") for b in benches))
        cells += [fmt(row.get(k)) for k in ("tau", "nodes", "draft_ms", "verify_ms")]
        if prefill:
            seconds = row.get("prefill_s")
            cells += [fmt(seconds and sum(seconds) / len(seconds)), fmt(row.get("decode_vs_plain"), "x")]
        cells.append(f"{row['same_as_plain']}/{n}" if "same_as_plain" in row else "–")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def interval_text(result: dict, row: str) -> str:
    """' (low-high)' of `row`'s overall ratio to taps plain ('' for taps plain itself)."""
    if row == "taps plain":
        return ""
    _, low, high = paired_interval(result, row)
    return f" ({low:.2f}-{high:.2f})"


def pair_line(result: dict, a: str, b: str) -> str:
    """Row a's tok/s over row b's, its 95% interval, and the share of resamples where a is faster."""
    for name in (a, b):
        if name not in result["rows"] or "error" in result["rows"][name]:
            known = ", ".join(r for r in result["rows"] if "error" not in result["rows"][r])
            raise SystemExit(f"error: no row {name!r} in this result; rows: {known}")
    ratio_ab, low, high = paired_interval(result, a, b)
    return f"{a} over {b}: {ratio_ab:.3f}x (95% interval {low:.3f}-{high:.3f})"


def compact_table(result: dict) -> str:
    """Ratios, tau and agreement with plain decoding, with the first divergence where outputs differ."""
    benches = list(dict.fromkeys(benchmarks_of(result)))
    names = [BENCH_NAMES.get(b, b) for b in benches]
    lines = [
        f"| decoder | tok/s | {' | '.join(names)} | all | tau | output == plain (first divergence) |",
        "|---|---|" + "---|" * len(names) + "---|---|---|",
    ]
    for name, row in result["rows"].items():
        if "error" in row:
            continue
        cells = [f"{row['tok_s']:.1f}", *(f"{ratio(result, name, b):.2f}x" for b in benches)]
        cells += [f"**{ratio(result, name, None):.2f}x**", fmt(row.get("tau"))]
        same = f"{row.get('same_as_plain', '–')}/{len(row['outputs'])}"
        diverged = [d for d in row.get("first_divergence", []) if d is not None]
        cells.append(same + (f" (token {', '.join(map(str, diverged))})" if diverged else ""))
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def machine_line(result: dict) -> str:
    meta = result["meta"]
    emulated = ", run as AVX2 (`--emulate-avx2`)" if meta.get("emulated_avx2") else ""
    return (
        f"{meta['target']} on {meta['machine']}{emulated}, {meta['dtype'].removeprefix('torch.')}, "
        f"torch {meta['torch']}, {meta['threads']} thread(s), "
        + (f"forwards padded to {meta['pad_rows']} rows, " if meta.get("pad_rows", 0) > 1 else "")
        + f"{meta['prompts_per_benchmark']} prompts per "
        f"benchmark, {meta['max_new_tokens']} new tokens, T = {meta['temperature']:g}, {meta['date']}; "
        f"limit of plain decoding {result['limit_tok_s']:.1f} tok/s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result")
    ap.add_argument("--t1", default=None, help="a run of the same rows at T = 1")
    ap.add_argument("--compact", action="store_true", help="ratios, tau and agreement only")
    ap.add_argument("--ci", action="store_true", help="a 95%% bootstrap interval on each overall ratio")
    ap.add_argument(
        "--pair", nargs=2, metavar=("A", "B"), help="row A's tok/s over row B's, with its 95%% interval"
    )
    args = ap.parse_args()
    result = load(args.result)
    if args.pair:
        print(pair_line(result, *args.pair))
        return
    print(f"_{machine_line(result)}_\n")
    t1 = args.t1 and load(args.t1)
    print(compact_table(result) if args.compact else full_table(result, t1, args.ci))
    for run, label in ((result, "All columns"), (t1, "The T = 1 columns")):
        if not run:
            continue
        notes = []
        if run is t1 and t1["meta"]["prompts_per_benchmark"] != result["meta"]["prompts_per_benchmark"]:
            notes.append(f"{t1['meta']['prompts_per_benchmark']} prompts per benchmark")
        if run["meta"].get("ignore_eos"):
            notes.append(f"every output ran to {run['meta']['max_new_tokens']} tokens (`--ignore-eos`)")
        if notes:
            print(f"\n_{label}: {'; '.join(notes)}._")


if __name__ == "__main__":
    main()
