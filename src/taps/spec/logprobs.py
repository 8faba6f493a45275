"""The target's log-probabilities of the tokens it emits, for clients that score replies.

Verification already computes the target's logits at every emitted position (the root row and the
rows of the accepted nodes), so asking for log-probabilities costs one log-softmax over those rows
and never changes which tokens are emitted. They are the target's own distribution, before
temperature and top-p (vLLM's default "raw" log-probabilities), so a reply's score does not depend
on how it was sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for `top_logprobs`


@dataclass(frozen=True)
class TokenLogprob:
    """One emitted token, its log-probability, and the `top` most likely tokens at its position."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprobs(logits: torch.Tensor, tokens: list[int], top: int) -> list[TokenLogprob]:
    """`logits[i]` is the target's distribution that `tokens[i]` was emitted from."""
    logp = torch.log_softmax(logits.float(), dim=-1).cpu()
    chosen = logp[torch.arange(len(tokens)), torch.tensor(tokens)].tolist()
    if top == 0:
        return [TokenLogprob(t, lp) for t, lp in zip(tokens, chosen)]
    best, ids = logp.topk(top, dim=-1)
    return [
        TokenLogprob(t, lp, tuple(zip(i, b)))
        for t, lp, i, b in zip(tokens, chosen, ids.tolist(), best.tolist())
    ]
