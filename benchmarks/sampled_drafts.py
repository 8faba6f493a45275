"""What sampled drafts would accept at T > 0, against the deterministic top-k drafts taps verifies.

taps (like EAGLE-2) drafts each node's children as the drafter's top-k tokens and, at T > 0, accepts
child x with the target's residual probability p(x) (exact for deterministic drafts). A child drawn
from the drafter's own distribution q and accepted with probability min(1, p(x) / q(x)) (speculative
sampling) is accepted with probability sum_x min(p(x), q(x)) = 1 - TV(p, q) instead. This measures both
at one drafting level, on the target's own T-sampled continuations of benchmark prompts: per position,
p is the target's distribution of the next-but-one token and q the drafter's first-level draft of it.

Columns: `top-1` (a chain's child, as verified today), `top-8` (all eight children of a level),
`sampled` (one sampled child), `sampled + top-7` (a sampled child first, then the top 7 others on the
residual), `target max` (the target's own most likely token). The engine drafts the one-child case
with `--drafts sampled` (a chain: `TreeDrafter._sample_chain`); sampled children beside top-k siblings
are not built (docs/paper-comparisons.md says why).

    TAPS_DATA_DIR=../shared/data python benchmarks/sampled_drafts.py --drafter eagle2-math --benchmark gsm8k
"""

from __future__ import annotations

import argparse

import torch

from taps.data.benchmarks import load_benchmark
from taps.data.chat import encode_first_turn
from taps.drafters import drafter_path
from taps.models.catalog import load_target
from taps.models.checkpoint import load_drafter
from taps.models.layers import CAUSAL
from taps.spec.verify import target_probs
from taps.training.trainer import online_features


def sample_continuation(model, ids: torch.Tensor, tokens: int, temperature: float, g) -> torch.Tensor:
    """The target's own continuation at `temperature` (recomputed each token: a study, not a decoder)."""
    for _ in range(tokens):
        hidden = online_features(model, ids[None])[0, -1:]
        probs = target_probs(model.logits(hidden), temperature)[0]
        ids = torch.cat([ids, torch.multinomial(probs, 1, generator=g)])
    return ids


def level_acceptance(p: torch.Tensor, q: torch.Tensor, k: int = 8) -> dict[str, float]:
    """Acceptance probabilities of one drafting level's children (see the module docstring)."""
    top = q.topk(k).indices
    both = torch.minimum(p, q)
    residual = (p - q).clamp(min=0)
    mass = float(residual.sum())
    # a sampled child s first, then the top k - 1 others on the residual: the expectation over s
    probs, draws = q.topk(256)
    then = 0.0
    for qs, s in zip(probs.tolist(), draws.tolist()):
        accept = min(1.0, float(p[s]) / qs)
        others = [int(x) for x in top.tolist() if x != s][: k - 1]
        rest = float(residual[others].sum()) / mass if mass > 0 else 0.0
        then += qs * (accept + (1 - accept) * rest)
    then += (1 - float(probs.sum())) * float(both.sum())  # the rare tail beyond 256 draws, approximately
    return {
        "top-1": float(p[top[0]]),
        f"top-{k}": float(p[top].sum()),
        "sampled": float(both.sum()),
        f"sampled + top-{k - 1}": then,
        "target max": float(p.max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--drafter", default="eagle2-math")
    ap.add_argument("--benchmark", default="gsm8k")
    ap.add_argument("--prompts", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=64, help="sampled continuation per prompt")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.temperature <= 0:
        ap.error("--temperature must be > 0: at T = 0 the top-1 draft is exact and optimal")
    torch.set_num_threads(args.threads)
    target = load_target(args.target, dtype=torch.float32, device="cpu")
    model = target.model
    drafter = load_drafter(drafter_path(args.drafter, target.name), model, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    totals: dict[str, float] = {}
    positions = 0
    for prompt in load_benchmark(args.benchmark, limit=args.prompts, seed=0):
        ids = torch.tensor(encode_first_turn(target.tokenizer, prompt))
        seq = sample_continuation(model, ids, args.tokens, args.temperature, g)
        with torch.inference_mode():
            feats = online_features(model, seq[None])[0]
            p_all = target_probs(model.logits(feats), args.temperature)  # row t: token t + 1
            pred = drafter(seq[1:][None], feats[:-1][None], torch.arange(len(seq) - 1), mask=CAUSAL)[0]
            q_draft = torch.softmax(pred.float() @ drafter.head_weight.float().T / args.temperature, -1)
        for t in range(len(ids) - 1, len(seq) - 2):  # q_draft[t] drafts token t + 2, as p_all[t + 1]
            q = torch.zeros_like(p_all[t + 1]).index_add_(0, drafter.d2t, q_draft[t])
            for key, value in level_acceptance(p_all[t + 1], q).items():
                totals[key] = totals.get(key, 0.0) + value
            positions += 1
    print(
        f"{args.drafter} on {args.benchmark}, T = {args.temperature}, {args.prompts} prompts, "
        f"{positions} positions: mean acceptance probability of one drafting level"
    )
    for key, value in totals.items():
        print(f"  {key:>16}: {value / positions:.3f}")


if __name__ == "__main__":
    main()
