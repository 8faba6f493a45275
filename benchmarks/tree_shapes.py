"""Which EAGLE-2 tree shape is fastest on this machine? tau and tokens/s per shape, against plain
decoding measured in the same run on the same prompts.

    python benchmarks/tree_shapes.py --drafter eagle2-math --benchmark gsm8k --prompts 6 --threads 1
"""

from __future__ import annotations

import argparse

import torch

from taps.data.benchmarks import load_benchmark
from taps.data.chat import encode_first_turn
from taps.drafters import make_proposer
from taps.models.catalog import load_target
from taps.spec.generate import GenerationConfig, SpeculativeGenerator
from taps.spec.propose import TreeShape

SHAPES = [(4, 4, 12), (8, 5, 24), (8, 6, 32), (10, 6, 48), (10, 7, 64), (6, 8, 32)]


def run(target, proposer, prompts, max_new: int):
    gen = SpeculativeGenerator(target.model, proposer)
    cfg = GenerationConfig(max_new_tokens=max_new, eos_token_ids=target.eos_token_ids)
    outs = [gen.generate(p, cfg) for p in prompts]
    steps = [s for o in outs for s in o.steps]
    tps = sum(len(o.tokens) for o in outs) / (sum(o.wall_ms for o in outs) / 1000)
    tau = sum(s.accepted + 1 for s in steps) / max(1, len(steps))
    draft = sum(s.draft_ms for s in steps) / max(1, len(steps))
    verify = sum(s.verify_ms for s in steps) / max(1, len(steps))
    return tps, tau, draft, verify


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--drafter", default="eagle2-math")
    ap.add_argument("--benchmark", default="gsm8k")
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target = load_target(args.target)
    prompts = [
        encode_first_turn(target.tokenizer, p)
        for p in load_benchmark(args.benchmark, args.data_dir, limit=args.prompts, seed=0)
    ]
    plain, _, _, plain_ms = run(target, None, prompts, args.max_new_tokens)
    print(
        f"target {args.target}, drafter {args.drafter}, {args.prompts} {args.benchmark} prompts, "
        f"{args.max_new_tokens} new tokens, {args.threads} thread(s); plain decoding {plain:.1f} tok/s "
        f"({plain_ms:.1f} ms/token)\n"
    )
    print(
        "| top_k | depth | total_tokens | tau | draft ms/step | verify ms/step | tok/s | speed-up "
        "|\n|---|---|---|---|---|---|---|---|"
    )
    for k, d, n in SHAPES:
        tps, tau, draft, verify = run(
            target, make_proposer(args.drafter, target, TreeShape(k, d, n)), prompts, args.max_new_tokens
        )
        print(
            f"| {k} | {d} | {n} | {tau:.2f} | {draft:.1f} | {verify:.1f} | {tps:.1f} | {tps / plain:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
