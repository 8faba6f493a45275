"""The tree budget of an earlier commit against today's, side by side in one run.

    python benchmarks/budget_ab.py --old REV [--drafters hass-chat,hass-math]
        [--benchmarks mt_bench,gsm8k] [--prompts 8] [--temperature 0] [--ignore-eos] [--no-old-bins]
        [--out FILE.json]

Loads `src/taps/spec/budget.py` as it was at REV (`git show`) beside the installed one, and runs,
round-robin prompt by prompt (the order reversing every prompt, as `benchmarks/engine.py` does):
plain decoding, each drafter under the old budget, under today's, and under today's with the old
acceptance bins (what today's other changes give without them; `--no-old-bins` leaves that row
out), and plain decoding again as the run's noise yardstick. `--ignore-eos`: every output runs to
--max-new-tokens (at T > 0, where each row samples its own text, as `benchmarks/engine.py` does).
Prints tok/s over plain decoding per benchmark and how many outputs equal plain decoding. Speed-ups
are ratios within this one run; nothing here is an assertion.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from taps.cli import load_target_from_args
from taps.data.benchmarks import load_benchmark
from taps.data.chat import encode_first_turn
from taps.drafters import make_strategy
from taps.spec.generate import GenerationConfig, SpeculativeGenerator
from taps.spec.propose import AUTO_SHAPE


def old_budget_module(rev: str):
    """taps.spec.budget as it was at `rev`, loaded under another name."""
    source = subprocess.run(
        ["git", "show", f"{rev}:src/taps/spec/budget.py"], capture_output=True, text=True, check=False
    )
    if source.returncode:
        raise SystemExit(f"error: no src/taps/spec/budget.py at {rev!r}: {source.stderr.strip()}")
    path = Path(tempfile.mkdtemp()) / "budget_old.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("budget_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decoders(target, drafters: list[str], old, old_bins: bool = True) -> dict[str, SpeculativeGenerator]:
    rows = {"plain": SpeculativeGenerator(target.model)}
    for name in drafters:
        rows[f"{name} old"] = SpeculativeGenerator(target.model, _with_old_budget(target, name, old))
        rows[f"{name} new"] = SpeculativeGenerator(
            target.model, make_strategy("single", [name], target, AUTO_SHAPE)
        )
        if not old_bins:
            continue
        unforgetting = make_strategy("single", [name], target, AUTO_SHAPE)
        unforgetting.budget.acceptance = old.AcceptanceModel()
        rows[f"{name} new, old bins"] = SpeculativeGenerator(target.model, unforgetting)
    rows["plain (control)"] = SpeculativeGenerator(target.model)
    return rows


def _with_old_budget(target, name: str, old):
    proposer = make_strategy("single", [name], target, AUTO_SHAPE)
    budget = old.TreeBudget(proposer.budget.curve, proposer.budget.max_nodes)
    return old.BudgetedProposer(proposer.inner, budget)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="the git revision whose budget to compare against")
    ap.add_argument("--drafters", default="hass-chat,hass-math")
    ap.add_argument("--benchmarks", default="mt_bench,gsm8k")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per benchmark")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--ignore-eos", action="store_true", help="every output runs to --max-new-tokens")
    ap.add_argument("--no-old-bins", action="store_true", help="leave out the 'new, old bins' rows")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    old = old_budget_module(args.old)
    ns = argparse.Namespace(
        target="smollm2-135m", device="cpu", dtype="float32", threads=1, pad_rows=None, attention="auto"
    )
    target = load_target_from_args(ns)
    rows = decoders(target, args.drafters.split(","), old, old_bins=not args.no_old_bins)
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        eos_token_ids=() if args.ignore_eos else tuple(target.eos_token_ids),
    )
    benchmarks = args.benchmarks.split(",")
    seconds = {name: dict.fromkeys(benchmarks, 0.0) for name in rows}
    tokens = {name: dict.fromkeys(benchmarks, 0) for name in rows}
    outputs: dict[str, list[list[int]]] = {name: [] for name in rows}
    order = list(rows.items())
    for bench in benchmarks:
        for i, item in enumerate(load_benchmark(bench, args.data_dir, limit=args.prompts, seed=0)):
            prompt = encode_first_turn(target.tokenizer, item)
            for name, gen in order if i % 2 == 0 else order[::-1]:
                out = gen.generate(prompt, config)
                seconds[name][bench] += out.wall_ms / 1000
                tokens[name][bench] += len(out.tokens)
                outputs[name].append(out.tokens)
            print(f"[budget_ab] {bench} prompt {i + 1} done", file=sys.stderr, flush=True)
    print(f"| decoder | {' | '.join(benchmarks)} | output == plain |")
    print("|---|" + "---|" * len(benchmarks) + "---|")
    for name in rows:
        rate = [
            tokens[name][b] / seconds[name][b] / (tokens["plain"][b] / seconds["plain"][b])
            for b in benchmarks
        ]
        equal = sum(x == y for x, y in zip(outputs[name], outputs["plain"]))
        print(f"| {name} | {' | '.join(f'{r:.2f}x' for r in rate)} | {equal}/{len(outputs['plain'])} |")
    if args.out:
        Path(args.out).write_text(
            json.dumps(dict(old=args.old, seconds=seconds, tokens=tokens, outputs=outputs))
        )


if __name__ == "__main__":
    main()
