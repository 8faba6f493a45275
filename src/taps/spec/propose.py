"""Proposers, and the EAGLE-2 dynamic draft tree built by one drafter.

A proposer is told, once per step, the committed tokens (the root, i.e. the last verified token,
last) and the target features of the newly committed positions, and returns a DraftTree under
the root. The verifier never sees how the tree was made, so new proposers plug in freely.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from taps.models.drafter import Drafter
from taps.spec.tree import DraftTree


class Proposer(ABC):
    """Drafts a tree each step. `features[i]` is the target feature paired with `tokens[-len(features) + i]`
    (EAGLE pairs the feature at position t with the token at t + 1)."""

    name: str = "proposer"

    def reset(self) -> None:
        """Forget the previous sequence (called before each prefill)."""

    @abstractmethod
    def propose(self, tokens: torch.Tensor, features: torch.Tensor) -> DraftTree: ...


@dataclass(frozen=True)
class TreeShape:
    """EAGLE-2 dynamic-tree knobs: children per expanded node and expanded nodes per level (`top_k`),
    maximum depth, and the number of nodes kept for verification (`total_tokens`)."""

    top_k: int = 8
    depth: int = 5
    total_tokens: int = 24

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.depth < 1 or self.total_tokens < 1:
            raise ValueError(f"tree shape needs top_k, depth, total_tokens >= 1, got {self}")


class DrafterProposer(Proposer):
    """EAGLE-2: expand the best `top_k` frontier nodes by cumulative log-prob, `depth` levels deep,
    then keep the `total_tokens` best nodes (a kept node's ancestors score at least as high)."""

    def __init__(self, drafter: Drafter, shape: TreeShape = TreeShape(), source: int = 0, name: str = "drafter"):
        self.drafter, self.shape, self.source, self.name = drafter, shape, source, name
        self.reset()

    def reset(self) -> None:
        self.cache = self.drafter.new_cache()
        self.pairs = 0  # verified (feature, token) pairs in the cache

    @torch.inference_mode()
    def propose(self, tokens: torch.Tensor, features: torch.Tensor) -> DraftTree:
        m = features.shape[0]
        self.cache.length = self.pairs  # drop last step's drafted entries
        positions = torch.arange(self.pairs, self.pairs + m)
        hidden = self.drafter(tokens[-m:], features, positions, self.cache)
        self.pairs += m
        return self._expand(hidden[-1:])

    def _expand(self, root_hidden: torch.Tensor) -> DraftTree:
        k, d2t = self.shape.top_k, self.drafter.d2t
        pool = _Pool()
        logp, ent = _log_probs(self.drafter, root_hidden)
        top = logp[0].topk(min(k, logp.shape[-1]))
        frontier = pool.add(d2t[top.indices], torch.full_like(top.indices, -1), top.values, ent.expand(len(top.values)))
        parent_hidden = root_hidden.expand(len(frontier), -1)
        slot_anc = torch.zeros(0, 0, dtype=torch.bool)  # ancestor rows over drafted cache slots
        slot_of: dict[int, int] = {}
        for level in range(1, self.shape.depth):
            hidden, slot_anc = self._forward_level(frontier, pool, parent_hidden, slot_anc, slot_of, level)
            logp, ent = _log_probs(self.drafter, hidden)
            cand = (pool.scores[frontier].unsqueeze(1) + logp).topk(min(k, logp.shape[-1]), dim=-1)
            parents = frontier.unsqueeze(1).expand_as(cand.indices)
            children = pool.add(d2t[cand.indices].flatten(), parents.flatten(), cand.values.flatten(),
                                ent.unsqueeze(1).expand_as(cand.values).flatten())
            best = pool.scores[children].topk(min(k, len(children))).indices
            row_of = {int(v): r for r, v in enumerate(frontier)}
            frontier = children[best]
            parent_hidden = hidden[[row_of[int(p)] for p in pool.parents[frontier]]]
        return pool.best_tree(self.shape.total_tokens, self.source)

    def _forward_level(self, frontier, pool, parent_hidden, slot_anc, slot_of, level):
        """Run the frontier nodes through the drafter; each sees the context and its drafted ancestors."""
        f, drafted = len(frontier), slot_anc.shape[0]
        rows = torch.zeros(f, drafted + f, dtype=torch.bool)
        for r, node in enumerate(frontier.tolist()):
            parent = int(pool.parents[node])
            if parent >= 0:
                ps = slot_of[parent]
                rows[r, :drafted] = slot_anc[ps]
                rows[r, ps] = True
            rows[r, drafted + r] = True
            slot_of[node] = drafted + r
        grown = torch.zeros(drafted + f, drafted + f, dtype=torch.bool)
        grown[:drafted, :drafted] = slot_anc
        grown[drafted:] = rows
        mask = torch.cat([torch.ones(f, self.pairs, dtype=torch.bool), rows], dim=1)
        positions = torch.full((f,), self.pairs - 1 + level)
        hidden = self.drafter(pool.tokens[frontier], parent_hidden, positions, self.cache, mask=mask)
        return hidden, grown


def _log_probs(drafter: Drafter, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.log_softmax(drafter.draft_logits(hidden), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp, entropy


class _Pool:
    """Every candidate node drafted in one step, before the best `total_tokens` are kept."""

    def __init__(self) -> None:
        self.tokens = torch.zeros(0, dtype=torch.long)
        self.parents = torch.zeros(0, dtype=torch.long)
        self.scores = torch.zeros(0)
        self.entropies = torch.zeros(0)
        self.depth = torch.zeros(0, dtype=torch.long)

    def add(self, tokens, parents, scores, entropies) -> torch.Tensor:
        start = len(self.tokens)
        depth = torch.where(parents < 0, 1, self.depth[parents.clamp(min=0)] + 1) if start else torch.ones_like(parents)
        self.tokens = torch.cat([self.tokens, tokens])
        self.parents = torch.cat([self.parents, parents])
        self.scores = torch.cat([self.scores, scores.float()])
        self.entropies = torch.cat([self.entropies, entropies.float()])
        self.depth = torch.cat([self.depth, depth])
        return torch.arange(start, len(self.tokens))

    def best_tree(self, total: int, source: int) -> DraftTree:
        # Rank by score, ties to the shallower node, so every kept node's parent is kept too;
        # then order the kept nodes by depth (parents before children) and score.
        order = _stable_order(self.depth, -self.scores)[:total]
        keep = order[_stable_order(-self.scores[order], self.depth[order])]
        new_index = torch.full((len(self.tokens),), -1, dtype=torch.long)
        new_index[keep] = torch.arange(len(keep))
        parents = self.parents[keep]
        parents = torch.where(parents >= 0, new_index[parents.clamp(min=0)], -1)
        return DraftTree(
            tokens=self.tokens[keep],
            parents=parents,
            scores=self.scores[keep],
            entropies=self.entropies[keep],
            sources=torch.full((len(keep),), 1 << source, dtype=torch.long),
        )


def _stable_order(minor: torch.Tensor, major: torch.Tensor) -> torch.Tensor:
    """Indices sorted ascending by `major`, ties by `minor`, then by index."""
    by_minor = torch.sort(minor, stable=True).indices
    return by_minor[torch.sort(major[by_minor], stable=True).indices]
