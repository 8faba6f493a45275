"""Prompt lookup: a drafter-free proposer that copies what followed the latest n-gram match.

Models often repeat spans of the prompt or of their own output (numbers in a worked solution,
names, code). Matching the last n tokens against the earlier text costs microseconds and needs no
training, which makes it the honest baseline every trained drafter must beat.
"""

from __future__ import annotations

import torch

from taps.spec.propose import Proposer
from taps.spec.tree import DraftTree


def match_confidences(n: int, branch: int, length: int) -> list[float]:
    """A prior confidence for each copied token: n / (n + 2) for an n-token match (longer matches
    repeat more reliably), the first token of the b-th most recent match divided by b + 1.

    Not a probability anyone measured: it ranks the nodes and, through the tree budget's confidence
    bins, keeps a long match's nodes apart from a one-token match's, so the budget learns each one's
    acceptance (with every score 0, every node of a depth shared one bin, whatever its match)."""
    per_token = n / (n + 2)
    return [per_token / (branch + 1) if j == 0 else per_token for j in range(length)]


class NgramProposer(Proposer):
    """Continuations of the most recent earlier occurrences of the longest matching suffix n-gram,
    merged into a trie (`branches` distinct matches, `length` tokens each)."""

    name = "ngram"

    def __init__(
        self, max_ngram: int = 3, min_ngram: int = 1, length: int = 8, branches: int = 2, source: int = 0
    ):
        if not 1 <= min_ngram <= max_ngram or length < 1 or branches < 1:
            raise ValueError("ngram proposer needs 1 <= min_ngram <= max_ngram, length >= 1, branches >= 1")
        self.max_ngram, self.min_ngram, self.length, self.branches, self.source = (
            max_ngram,
            min_ngram,
            length,
            branches,
            source,
        )

    def propose(self, tokens: torch.Tensor, features: torch.Tensor) -> DraftTree:
        seq = tokens.tolist()
        for n in range(min(self.max_ngram, len(seq) - 1), self.min_ngram - 1, -1):
            paths = self._continuations(seq, n)
            if paths:
                return DraftTree.from_paths(
                    paths, self.source, [match_confidences(n, b, len(p)) for b, p in enumerate(paths)]
                )
        return DraftTree.empty()

    def _continuations(self, seq: list[int], n: int) -> list[list[int]]:
        suffix, found = seq[-n:], []
        for start in range(len(seq) - n - 1, -1, -1):
            if seq[start : start + n] == suffix:
                cont = seq[start + n : start + n + self.length]
                if cont and cont not in found:
                    found.append(cont)
                    if len(found) == self.branches:
                        break
        return found
