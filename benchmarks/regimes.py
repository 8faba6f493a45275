"""Greedy and sampled generations learning apart in the tree budget, against one shared budget.

    TAPS_DATA_DIR=../shared/data python benchmarks/regimes.py [--drafter eagle2-mixed] [--lookup on]
        [--prompts 8] [--dtype bfloat16] [--threads 1] [--max-new-tokens 64]

One proposer per variant, side by side, on GSM8K + MT-Bench prompts whose temperature alternates
0, 1, 0, 1 as a server's mixed traffic or an eval grid's cells do: `split` is the default (the budget
keeps acceptance, calibration, rate and pauses apart per temperature class,
`TreeBudget.set_sampling`), `shared` the budget as it was before, one state for both. Each prompt runs
at T = 0 then T = 1, each variant in turn (which goes first alternates by prompt), every output to
the full length. Prints tok/s per variant
and temperature and split / shared with a 95% bootstrap interval over the prompts.
"""

from __future__ import annotations

import argparse

import torch

from taps.data.benchmarks import load_benchmark
from taps.data.chat import encode_first_turn
from taps.drafters import make_strategy
from taps.eval.intervals import ratio_interval
from taps.models.catalog import load_target
from taps.spec.generate import GenerationConfig, SpeculativeGenerator
from taps.spec.propose import AUTO_SHAPE

TEMPERATURES = (0.0, 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--drafter", default="eagle2-mixed")
    ap.add_argument("--lookup", default="on", choices=["on", "off"])
    ap.add_argument("--prompts", type=int, default=8, help="per benchmark")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target = load_target(dtype=getattr(torch, args.dtype), device="cpu")
    items = [p for b in ("gsm8k", "mt_bench") for p in load_benchmark(b, args.data_dir, args.prompts, seed=0)]
    prompts = [encode_first_turn(target.tokenizer, p) for p in items]
    gens = {}
    for name in ("split", "shared"):
        proposer = make_strategy("single", [args.drafter], target, AUTO_SHAPE, lookup=args.lookup)
        if name == "shared":
            proposer.budget.set_sampling = lambda sampling: None  # one state for both temperatures
        gens[name] = SpeculativeGenerator(target.model, proposer)
    runs = {(name, t): ([], []) for name in gens for t in TEMPERATURES}  # (tokens, ms) per prompt
    for i, prompt in enumerate(prompts):
        for t in TEMPERATURES:
            for name in sorted(gens, reverse=i % 2 == 1):  # who goes first alternates by prompt
                gen = gens[name]
                config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=t, seed=i)
                out = gen.generate(prompt, config)
                runs[(name, t)][0].append(len(out.tokens))
                runs[(name, t)][1].append(out.wall_ms)
        print(f"[regimes] prompt {i + 1}/{len(prompts)}", flush=True)
    strata = [p.benchmark for p in items]
    setting = f"{args.dtype}, {args.threads} thread(s), {len(prompts)} prompts"
    print(f"\n{args.drafter}, lookup {args.lookup}, {setting}")
    for t in TEMPERATURES:
        split, shared = runs[("split", t)], runs[("shared", t)]
        tok_s = {k: 1000 * sum(runs[(k, t)][0]) / sum(runs[(k, t)][1]) for k in gens}
        ratio = ratio_interval(*split, *shared, strata=strata)
        speeds = f"split {tok_s['split']:.1f} tok/s, shared {tok_s['shared']:.1f} tok/s"
        print(f"T = {t:g}: {speeds}, split / shared {ratio}")
    pooled = [sum((runs[(k, t)][j] for t in TEMPERATURES), []) for k in gens for j in (0, 1)]
    print(f"both: split / shared {ratio_interval(*pooled, strata=strata * len(TEMPERATURES))}")


if __name__ == "__main__":
    main()
