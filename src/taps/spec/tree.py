"""DraftTree: the candidate continuations a proposer hands to the verifier.

Nodes 0..m-1 hang under a root (the last verified token, which is not a node). Each node has a
token, a parent (-1 for the root, otherwise an earlier node: the order is topological), a score
(sum of draft log-probs along its path, so exp(score) is its cumulative confidence), the draft
entropy of the distribution it was drawn from, and a bit mask of the proposers that drafted it
(bit i = member i of a combination; a lone proposer is member 0).

A sampled tree (`proposals` set) holds nodes drawn from the drafter's distribution rather than picked
as its top-k: row i of `proposals` is the distribution node i was drawn from (over the draft
vocabulary `proposal_ids`), which the verifier needs for its acceptance rule (`taps.spec.verify`).
A mixed tree also holds deterministic nodes (top-k or copied by prompt lookup), whose proposal rows
are all zero. Its drawn nodes hang from the root or from drawn nodes only, never merged with the
deterministic ones, and which of them are verified never depends on their own tokens (see `best`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class DraftTree:
    tokens: torch.Tensor  # [m] long
    parents: torch.Tensor  # [m] long, -1 = root
    scores: torch.Tensor  # [m] float, cumulative draft log-prob
    entropies: torch.Tensor  # [m] float, entropy of the draft distribution at the parent (nan if none)
    sources: torch.Tensor  # [m] long, bit mask of the proposers that drafted the node
    proposals: torch.Tensor | None = None  # [m, v] float: the distribution each node was sampled from
    proposal_ids: torch.Tensor | None = None  # [v] long: the target token id of each proposal column

    def __post_init__(self) -> None:
        m = self.tokens.shape[0]
        if any(t.shape != (m,) for t in (self.parents, self.scores, self.entropies, self.sources)):
            raise ValueError("DraftTree fields must all have shape [m]")
        if (self.proposals is None) != (self.proposal_ids is None) or (
            self.proposals is not None and self.proposals.shape != (m, *self.proposal_ids.shape)
        ):
            raise ValueError("a sampled DraftTree needs proposals [m, v] and proposal_ids [v]")
        if m and bool((self.parents >= torch.arange(m, device=self.parents.device)).any()):
            raise ValueError("DraftTree parents must precede their children")

    @classmethod
    def empty(cls) -> DraftTree:
        return cls.from_paths([])

    @classmethod
    def from_paths(
        cls, paths: list[list[int]], source: int = 0, confidences: list[list[float]] | None = None
    ) -> DraftTree:
        """Merge token paths under the root into one trie: shared prefixes become one node.

        `confidences[i][j]`: the proposer's confidence in token j of path i given its prefix; a node's
        score sums their logs along its path (the first path through a shared node sets it). Without
        them every score is 0 (confidence 1)."""
        tokens: list[int] = []
        parents: list[int] = []
        scores: list[float] = []
        index: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
        for i, path in enumerate(paths):
            parent = -1
            for j, tok in enumerate(path):
                if (parent, tok) not in index:
                    index[(parent, tok)] = len(tokens)
                    step = math.log(confidences[i][j]) if confidences else 0.0
                    scores.append((scores[parent] if parent >= 0 else 0.0) + step)
                    tokens.append(tok)
                    parents.append(parent)
                parent = index[(parent, tok)]
        m = len(tokens)
        return cls(
            tokens=torch.tensor(tokens, dtype=torch.long),
            parents=torch.tensor(parents, dtype=torch.long),
            scores=torch.tensor(scores, dtype=torch.float32),
            entropies=torch.full((m,), float("nan")),
            sources=torch.full((m,), 1 << source, dtype=torch.long),
        )

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def sampled(self) -> bool:
        """Whether the tree carries `proposals`: its nodes drawn from them (`sampled_nodes`) are
        verified by speculative sampling."""
        return self.proposals is not None

    @property
    def sampled_nodes(self) -> torch.Tensor:
        """Bool [m]: which nodes were drawn from a proposal (all of a sampled chain's, none of a
        top-k tree's; a mixed tree's deterministic nodes have all-zero proposal rows)."""
        if self.proposals is None:
            return torch.zeros(len(self), dtype=torch.bool, device=self.tokens.device)
        return self.proposals.sum(-1) > 0

    def to(self, device: torch.device | str) -> DraftTree:
        if self.tokens.device == torch.device(device):
            return self
        fields = (self.tokens, self.parents, self.scores, self.entropies, self.sources)
        extra = (self.proposals, self.proposal_ids)
        return DraftTree(*(t.to(device) for t in fields), *(t if t is None else t.to(device) for t in extra))

    def subtree(self, keep: torch.Tensor) -> DraftTree:
        """The nodes `keep` (ascending indices, closed under parents), renumbered in their order."""
        new_index = torch.full((len(self),), -1, dtype=torch.long, device=self.tokens.device)
        new_index[keep] = torch.arange(len(keep), device=self.tokens.device)
        parents = self.parents[keep]
        parents = torch.where(parents >= 0, new_index[parents.clamp(min=0)], -1)
        return DraftTree(
            self.tokens[keep],
            parents,
            self.scores[keep],
            self.entropies[keep],
            self.sources[keep],
            None if self.proposals is None else self.proposals[keep],
            self.proposal_ids,
        )

    def best(self, count: int) -> DraftTree:
        """The `count` nodes of highest score, closed under parents: a node ranks by the lowest score
        on its path (a merged trie can hold a child scored above its parent by another member), ties
        to the shallower node, then the earlier one; returned in the original (topological) order.
        A tree with drawn nodes is cut by `_exact_keep` instead."""
        if count >= len(self):
            return self
        keep = self._exact_keep(count) if self.sampled else self._ranked(range(len(self)))[:count]
        return self.subtree(torch.tensor(sorted(keep), dtype=torch.long))

    def _ranked(self, nodes) -> list[int]:
        """`nodes` best first, as `best` ranks them."""
        rank = self.scores.tolist()
        for i, p in enumerate(self.parents.tolist()):  # parents precede children
            if p >= 0:
                rank[i] = min(rank[i], rank[p])
        depth = self.depths().tolist()
        return sorted(nodes, key=lambda i: (-rank[i], depth[i], i))

    def _exact_keep(self, count: int) -> list[int]:
        """`count` nodes of a tree with drawn nodes, chosen without looking at any drawn token: the
        best deterministic nodes among themselves (leaving one place for the drawn nodes if there are
        any), then the drawn nodes in node order (a chain's from its root down).

        Speculative sampling accepts a drawn token x with min(1, p(x) / q(x)) only if x still follows
        q given that it is verified, and the verifier tries the deterministic siblings of a drawn node
        before it and goes on after rejecting it: so neither the drawn nodes nor the deterministic
        ones may be kept by a rule that sees a drawn token or its descendants (ranking all nodes by
        score would: a drawn node's children score by what was drawn above them)."""
        drawn = self.sampled_nodes.tolist()
        sampled = [i for i in range(len(self)) if drawn[i]]
        fixed = self._ranked([i for i in range(len(self)) if not drawn[i]])
        fixed = fixed[: max(0, count - (1 if sampled else 0))]
        return fixed + sampled[: count - len(fixed)]

    def depths(self) -> torch.Tensor:
        """Depth of each node (children of the root have depth 1)."""
        depth: list[int] = []  # built as a list: per-element tensor writes cost ~5 us each, every step
        for p in self.parents.tolist():
            depth.append(1 if p < 0 else depth[p] + 1)
        return torch.tensor(depth, dtype=torch.long)

    def verification_inputs(
        self, root: int, base: int, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens, positions and ancestor mask for one target pass over [root] + nodes, on `device`.

        Row i of the mask lets entry i see the root, its ancestors and itself; the committed
        context (before `base`) is visible to all and added by the forward. Position = base + depth.
        """
        m = len(self)
        rows = np.zeros((m + 1, m + 1), dtype=bool)  # numpy: row copies cost ~1 us here, ~10 as tensors
        rows[0, 0] = True
        for i, p in enumerate(self.parents.tolist()):
            rows[i + 1] = rows[p + 1]
            rows[i + 1, i + 1] = True
        mask = torch.from_numpy(rows)
        tokens = torch.cat([torch.tensor([root]), self.tokens.cpu()])
        positions = base + mask.sum(1) - 1  # a row holds the root, the node's ancestors and itself: depth + 1
        return tokens.to(device), positions.to(device), mask.to(device)

    def children(self) -> list[list[int]]:
        """children()[0] lists the root's children, children()[i + 1] node i's (node order kept)."""
        out: list[list[int]] = [[] for _ in range(len(self) + 1)]
        for i, p in enumerate(self.parents.tolist()):
            out[p + 1].append(i)
        return out
