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
    """One token, its log-probability (None for a prompt's first token, which nothing predicts), and
    the `top` most likely tokens at its position."""

    token: int
    logprob: float | None
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


@torch.inference_mode()
def prompt_logprobs(model, prompt_ids: list[int], top: int, rows: int = 256) -> list[TokenLogprob]:
    """Every prompt token's log-probability given the tokens before it (what a completions client
    asks with `echo`), from one forward over the prompt on a cache of its own; the logits are made
    `rows` at a time, so a long prompt never holds all of them at once."""
    hidden = model(torch.tensor(prompt_ids, device=model.device), model.new_cache(len(prompt_ids)))
    scores = [TokenLogprob(prompt_ids[0], None)]
    for start in range(0, len(prompt_ids) - 1, rows):
        stop = min(start + rows, len(prompt_ids) - 1)
        scores += token_logprobs(model.logits(hidden[start:stop]), prompt_ids[start + 1 : stop + 1], top)
    return scores
