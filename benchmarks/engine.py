"""Engine micro- and end-to-end benchmark: every figure measured side by side in one run.

    python benchmarks/engine.py [--target smollm2-135m] [--threads 1] [--prompts 4] [--max-new-tokens 64]

Prints (1) target forward latency by number of tree tokens; (2) one EAGLE-2 drafting step with the
full vs a reduced draft vocabulary, and N drafters drafting one by one vs stacked; (3) our plain
decoding vs `transformers` generate; (4) the n-gram proposer vs plain decoding; (5) a trained
drafter over tree shapes, its time per step split into drafting, verification and the rest.
Not a test: no assertions.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from taps.data.benchmarks import load_benchmark
from taps.data.chat import encode_chat
from taps.models.catalog import load_target
from taps.models.drafter import Drafter, DrafterConfig
from taps.spec.combine import MergedProposer
from taps.spec.generate import GenerationConfig, SpeculativeGenerator
from taps.spec.ngram import NgramProposer
from taps.spec.propose import DrafterProposer, TreeShape


def median_ms(fn, repeat: int = 10) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def forward_latency(target, context: int = 128) -> list[tuple[int, float]]:
    model = target.model
    cache = model.new_cache()
    model(torch.randint(0, 1000, (context,)), cache)
    rows = []
    for n in (1, 8, 16, 32, 64):
        tokens, positions = torch.randint(0, 1000, (n,)), torch.arange(context, context + n)
        mask = torch.ones(n, n, dtype=torch.bool).tril()

        def step(tokens=tokens, positions=positions, mask=mask if n > 1 else None):
            cache.length = context
            model.logits(model(tokens, cache, positions, mask))

        rows.append((n, median_ms(step)))
    return rows


def random_drafter(target, vocab: int | None) -> Drafter:
    drafter = Drafter(DrafterConfig(target.model.shape, draft_vocab_size=vocab)).to(target.model.dtype)
    if vocab:
        drafter.d2t = torch.arange(vocab)
    return drafter.requires_grad_(False).attach(target.model)


def draft_latency(
    target, shape: TreeShape, vocab: int | None, members: int = 1, batched: bool = True
) -> float:
    """One drafting step; with members > 1, a merged committee drafting stacked or one by one."""
    proposers = [DrafterProposer(random_drafter(target, vocab), shape, source=i) for i in range(members)]
    proposer = proposers[0] if members == 1 else MergedProposer(proposers, batched=batched)
    ctx = torch.randint(0, 1000, (128,))
    feats = target.model(ctx, target.model.new_cache())
    proposer.propose(ctx, feats)
    return median_ms(lambda: proposer.propose(ctx[-1:], feats[-1:]))


def decode(target, prompts, proposer, max_new: int, timing: bool = False):
    gen = SpeculativeGenerator(target.model, proposer)
    cfg = GenerationConfig(max_new_tokens=max_new, eos_token_ids=target.eos_token_ids)
    outs = [gen.generate(p, cfg) for p in prompts]
    toks, ms = sum(len(o.tokens) for o in outs), sum(o.wall_ms for o in outs)
    steps = [s for o in outs for s in o.steps]
    result = (
        [o.tokens for o in outs],
        toks / (ms / 1000),
        sum(s.accepted + 1 for s in steps) / max(1, len(steps)),
    )
    if timing:  # mean draft / verify ms per target step, and the rest of the wall time per step
        draft, verify = (sum(getattr(s, f) for s in steps) / len(steps) for f in ("draft_ms", "verify_ms"))
        rest = (ms - sum(o.prefill_ms for o in outs)) / len(steps) - draft - verify
        return *result, (draft, verify, rest)
    return result


SHAPES = [(8, 5, 24), (8, 5, 16), (6, 4, 12), (4, 4, 8), (4, 3, 6), (3, 3, 5), (2, 4, 4), (1, 4, 4)]


def shape_sweep(target, prompts, drafter: str, max_new: int, plain_tps: float) -> None:
    """A trained drafter over tree shapes: where a step's time goes, and what tau it buys."""
    from taps.drafters import make_proposer

    print(
        f"\n| {drafter}: tree (top_k, depth, total) | tok/s | vs our plain | tau | draft ms / step | verify "
        "ms / step | other ms / step |"
    )
    print("|---|---|---|---|---|---|---|")
    for shape in SHAPES:
        _, tps, tau, (draft, verify, rest) = decode(
            target, prompts, make_proposer(drafter, target, TreeShape(*shape)), max_new, True
        )
        print(
            f"| {shape} | {tps:.1f} | {tps / plain_tps:.2f}x | {tau:.2f} | {draft:.1f} | {verify:.1f} | "
            f"{rest:.1f} |"
        )


def hf_generate(target, prompts, max_new: int):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(target.path), dtype=target.model.dtype).eval()
    outs, toks, sec = [], 0, 0.0
    for p in prompts:
        t = time.perf_counter()
        out = hf.generate(
            torch.tensor([p]),
            max_new_tokens=max_new,
            do_sample=False,
            eos_token_id=list(target.eos_token_ids),
            pad_token_id=target.eos_token_ids[0],
        )
        sec += time.perf_counter() - t
        outs.append(out[0, len(p) :].tolist())
        toks += len(outs[-1])
    return outs, toks / sec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=4, help="GSM8K prompts for the decoding comparisons")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument(
        "--drafter", default="eagle2-math", help="trained drafter for the tree-shape sweep ('' = skip)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target = load_target(args.target)
    print(
        f"target {args.target} ({target.model.dtype}), torch {torch.__version__}, {args.threads} thread(s)\n"
    )

    print("| tree tokens | target forward ms | vs 1 token |\n|---|---|---|")
    lat = forward_latency(target)
    for n, ms in lat:
        print(f"| {n} | {ms:.1f} | {ms / lat[0][1]:.2f}x |")

    shape = TreeShape()
    full = draft_latency(target, shape, None)
    print(
        f"\n| draft step (top_k {shape.top_k}, depth {shape.depth}, total {shape.total_tokens}) | ms "
        "|\n|---|---|"
    )
    print(f"| full vocabulary ({target.model.shape.vocab_size}) | {full:.1f} |")
    for v in (16384, 8192, 4096):
        print(f"| reduced vocabulary ({v}) | {draft_latency(target, shape, v):.1f} |")

    print(
        "\n| drafters per step (vocabulary 8192) | one by one ms | stacked ms | stacked vs one by one "
        "|\n|---|---|---|---|"
    )
    for n in (2, 3):
        apart, stacked = (
            draft_latency(target, shape, 8192, n, batched=False),
            draft_latency(target, shape, 8192, n),
        )
        print(f"| {n} | {apart:.1f} | {stacked:.1f} | {apart / stacked:.2f}x |")

    prompts = [
        encode_chat(target.tokenizer, [{"role": "user", "content": p.turns[0]}])
        for p in load_benchmark("gsm8k", args.data_dir, limit=args.prompts, seed=0)
    ]
    ours, plain_tps, _ = decode(target, prompts, None, args.max_new_tokens)
    theirs, hf_tps = hf_generate(target, prompts, args.max_new_tokens)
    ngram, ngram_tps, ngram_tau = decode(target, prompts, NgramProposer(), args.max_new_tokens)
    same = sum(a == b for a, b in zip(ours, theirs))
    print(
        f"\n| decoding ({args.prompts} GSM8K prompts, {args.max_new_tokens} new tokens max) | tok/s | vs our "
        "plain | tau |\n|---|---|---|---|"
    )
    print(f"| transformers generate (greedy) | {hf_tps:.1f} | {hf_tps / plain_tps:.2f}x | 1.00 |")
    print(f"| taps plain decoding | {plain_tps:.1f} | 1.00x | 1.00 |")
    print(f"| taps + n-gram proposer | {ngram_tps:.1f} | {ngram_tps / plain_tps:.2f}x | {ngram_tau:.2f} |")
    print(
        f"\nn-gram output == plain output: {sum(a == b for a, b in zip(ours, ngram))}/{len(prompts)}; "
        f"taps plain == transformers greedy: {same}/{len(prompts)} (bf16 kernels may break near-ties "
        "differently)"
    )
    if args.drafter:
        shape_sweep(target, prompts, args.drafter, args.max_new_tokens, plain_tps)


if __name__ == "__main__":
    main()
