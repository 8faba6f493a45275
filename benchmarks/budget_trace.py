"""Trace the tree budget's decisions, prompt by prompt: is drafting judged right?

    python benchmarks/budget_trace.py [--strategy single] [--drafters eagle2-math] [--lookup on]
        [--temperature 1] [--benchmarks gsm8k,mt_bench] [--prompts 4] [--max-new-tokens 64] [--emulate-avx2]
        [--dtype float32|bfloat16|auto] [--threads 1] [--out FILE.json]

Runs one proposer under the auto budget on the prompts in order (the budget carries what it learned
from one prompt to the next, as in `benchmarks/engine.py`), with plain decoding on the same prompt
just before each, and prints per prompt: the steps that drafted and the plain ones, the tokens the
budget expected its drafting steps to emit against the tokens they did emit, and the time ratio to
plain decoding. Expected above emitted means the acceptance estimates were optimistic for that text.
With `--out`, every step's record (drafting?, expected, accepted, tree size, ms) is written as JSON.
Ratios here are two runs one after the other, not the round-robin of `engine.py`: a diagnostic.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from taps.cli import load_target_from_args
from taps.data.benchmarks import load_benchmark
from taps.data.chat import encode_first_turn
from taps.drafters import make_strategy
from taps.spec.budget import TreeBudget
from taps.spec.generate import GenerationConfig, SpeculativeGenerator
from taps.spec.propose import AUTO_SHAPE


class TracedBudget(TreeBudget):
    """A TreeBudget that records, before learning from each step, what it had decided for it."""

    def __init__(self, curve, max_nodes: int):
        super().__init__(curve, max_nodes)
        self.trace: list[dict] = []

    def choose(self, tree):
        self._offered = len(tree)  # the proposer's tree, before the budget's choice
        return super().choose(tree)

    def observe(self, accepted, tree_size, draft_ms, verify_ms, node_accepted) -> None:
        self.trace.append(
            dict(drafting=self.drafting, expected=self._expected if self.drafting else 1.0,
                 offered=getattr(self, "_offered", 0) if self.drafting else 0,
                 accepted=accepted, tree_size=tree_size, draft_ms=draft_ms, verify_ms=verify_ms,
                 ingest_ms=self._ingest_ms, calibration=self.calibration_factor)
        )  # fmt: skip
        self._offered = 0
        super().observe(accepted, tree_size, draft_ms, verify_ms, node_accepted)
        spec = self.speculative.value
        self.trace[-1] |= dict(  # what the step taught it, in tokens per second
            plain_scale=self.costs.plain_ratio, rate=1000 * self.rate, plain_rate=1000 * self.plain_rate(),
            speculative_rate=1000 * spec if spec else None, pause=self.pause,
        )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--strategy", default="single")
    ap.add_argument("--drafters", default="eagle2-math")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--benchmarks", default="gsm8k,mt_bench")
    ap.add_argument("--prompts", type=int, default=4, help="prompts per benchmark")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--emulate-avx2", action="store_true", help="as `benchmarks/engine.py --emulate-avx2`")
    ap.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lookup", choices=["auto", "on", "off"], default="off", help="as `taps generate`'s")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.emulate_avx2:  # engine.py's, re-executing this script with AVX2-capped kernels
        sys.path.insert(0, str(Path(__file__).parent))
        from engine import emulate_avx2

        emulate_avx2()
    ns = argparse.Namespace(
        target=args.target,
        device="cpu",
        dtype=args.dtype,
        threads=args.threads,
        pad_rows=None,
        attention="auto",
    )
    target = load_target_from_args(ns)
    proposer = make_strategy(args.strategy, args.drafters.split(","), target, AUTO_SHAPE, lookup=args.lookup)
    budget = TracedBudget(proposer.budget.curve, proposer.budget.max_nodes)
    proposer.budget = budget
    proposer.inner.attach_budget(budget)
    speculative, plain = SpeculativeGenerator(target.model, proposer), SpeculativeGenerator(target.model)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    warm = GenerationConfig(max_new_tokens=8)
    items = [
        p
        for b in args.benchmarks.split(",")
        for p in load_benchmark(b, args.data_dir, limit=args.prompts, seed=0)
    ]
    prompts = [encode_first_turn(target.tokenizer, p) for p in items]
    for gen in (speculative, plain):
        gen.generate(prompts[0][:16], warm)
    budget.trace.clear()
    print("| prompt | steps drafted / plain | expected tokens | emitted tokens | vs plain |")
    print("|---|---|---|---|---|")
    for item, prompt in zip(items, prompts):
        base = plain.generate(prompt, config)
        start = len(budget.trace)
        out = speculative.generate(prompt, config)
        steps = budget.trace[start:]
        drafted = [s for s in steps if s["drafting"]]
        expected, emitted = sum(s["expected"] for s in drafted), sum(s["accepted"] + 1 for s in drafted)
        print(
            f"| {item.id} | {len(drafted)} / {len(steps) - len(drafted)} | {expected:.1f} | {emitted} "
            f"| {base.wall_ms / out.wall_ms:.2f}x |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(budget.trace))


if __name__ == "__main__":
    main()
