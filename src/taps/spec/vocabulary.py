"""The draft vocabulary grown by the tokens of the context: what a reply copies, a drafter can draft.

A drafter trained over a reduced vocabulary (the 8192 most frequent tokens of its training replies,
which keeps its head cheap on a CPU) can never propose a token outside it, and replies copy the
words of their prompt: 10.7% of the tokens the target wrote on 10 MT-Bench prompts lay outside
eagle2-chat's vocabulary (' orbital', ' satellite', ...; docs/gpu.md, "The whole vocabulary").
The head is the target's own frozen LM head, so any token can be scored with no training: this
adds, per sequence, the head rows of every token the context holds (prompt and reply so far) that
the draft vocabulary lacks, a few hundred rows beside 8192 where the whole vocabulary is 49152.

For a stack of drafters (merged, routed) the added tokens are shared; a member that already has one
in its own vocabulary scores the added copy at -inf, so no member proposes a token twice.
"""

from __future__ import annotations

import torch

from taps.models.drafter import Drafter


class ContextVocabulary:
    """Extra draft-vocabulary entries for the current sequence, appended after a drafter's own."""

    def __init__(self, model: Drafter):
        d2t = model.d2t if model.d2t.dim() == 2 else model.d2t[None]
        head = model.target_head
        self.d2t, self.head = d2t, head
        known = torch.zeros(d2t.shape[0], head.shape[0], dtype=torch.bool, device=d2t.device)
        self.known = known.scatter_(1, d2t, True)  # [members, target vocab]
        self.reset()

    def reset(self) -> None:
        """Forget the previous sequence's tokens."""
        self.missing = ~self.known.all(0)  # tokens some member cannot draft and not yet added
        self.ids = torch.zeros(0, dtype=torch.long, device=self.d2t.device)
        # float32: a few hundred rows, where an unpacked bf16 matmul costs more on a CPU than the
        # float32 one (~40 us a call against ~13, Zen 4 EPYC)
        self.weight = torch.zeros(0, self.head.shape[1], device=self.d2t.device)
        self.bias = torch.zeros(self.d2t.shape[0], 0, device=self.d2t.device)
        self.masked = False  # whether any member scores an added token at -inf (a stack only)
        self._token_ids = self.d2t

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, tokens: torch.Tensor) -> None:
        """Add the tokens among `tokens` (target ids) that some member cannot draft yet."""
        tokens = tokens.to(self.missing.device)
        new = tokens[self.missing[tokens]].unique()
        if not len(new):
            return
        self.missing[new] = False
        self.ids = torch.cat([self.ids, new])
        self.weight = torch.cat([self.weight, self.head[new].to(self.weight.device, torch.float32)])
        # -inf where a member has the token already: its own entry scores it
        bias = torch.where(self.known[:, new], -torch.inf, 0.0)
        self.bias = torch.cat([self.bias, bias], dim=1)
        self.masked = self.masked or bool(self.known[:, new].any())
        self._token_ids = torch.cat([self.d2t, self.ids.expand(self.d2t.shape[0], -1)], dim=1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores [N, ..., K] of the added tokens for predicted features `hidden` [N, ..., H]."""
        scores = hidden.float() @ self.weight.mT
        if not self.masked:
            return scores
        return scores + self.bias.view(self.bias.shape[0], *[1] * (scores.dim() - 2), -1)

    def token_ids(self) -> torch.Tensor:
        """Draft ids -> target ids [N, V + K]: each member's own vocabulary, then the added tokens."""
        return self._token_ids


def context_vocabulary(model: Drafter, vocabulary: str) -> ContextVocabulary | None:
    """The context vocabulary a drafter (or stack) scoring `vocabulary` (`TreeShape.vocabulary`) gets:
    one for "context" and "auto" (which on a GPU widens drafters to the whole vocabulary, see
    `taps.drafters.scoring`); none where it scores the whole vocabulary already or its trained one only."""
    reduced = model.config.draft_vocab_size is not None
    if vocabulary not in ("context", "auto") or not reduced or model.__dict__.get("target_head") is None:
        return None
    return ContextVocabulary(model)
