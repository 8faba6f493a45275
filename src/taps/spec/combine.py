"""Several drafters at inference time: confidence / entropy routing and merged-tree verification.

Every strategy is itself a Proposer, so the verifier and the loop do not change. All member
proposers see every step's accepted tokens and target features, so none falls behind whichever
tree was verified. Node `sources` are bit masks: bit i set = member i drafted that node.
(Weight averaging makes a new drafter instead: see `taps.models.average`.)
"""

from __future__ import annotations

import math

import torch

from taps.models.stacked import stackable
from taps.spec.propose import DrafterProposer, Proposer, TreeDrafter
from taps.spec.tree import DraftTree

STRATEGIES = ("single", "average", "route:confidence", "route:entropy", "merged", "merged:cut")


class Committee:
    """The members of a combination, drafting together: drafters of one shape are stacked into a
    TreeDrafter (one batched forward per tree level for all of them); any other proposer drafts alone.
    `batched=False` drafts every member on its own (to measure what batching saves)."""

    def __init__(self, members: list[Proposer], batched: bool = True):
        self.members = members
        self.groups: list[tuple[list[int], Proposer | TreeDrafter]] = []
        free = list(range(len(members)))
        while free:
            first = free.pop(0)
            index = [first, *(j for j in free if batched and _lockstep(members[first], members[j]))]
            free = [j for j in free if j not in index]
            if len(index) == 1:
                self.groups.append((index, members[first]))
            else:
                group = [members[i] for i in index]
                self.groups.append(
                    (
                        index,
                        TreeDrafter([m.drafter for m in group], group[0].shape, [m.source for m in group]),
                    )
                )

    def reset(self) -> None:
        for _, unit in self.groups:
            unit.reset()

    def attach_budget(self, budget) -> None:
        for _, unit in self.groups:
            if isinstance(unit, TreeDrafter):
                unit.budget = budget
            else:
                unit.attach_budget(budget)

    def sample_drafts(self, temperature: float, generator: torch.Generator) -> None:
        """Tell the members that draft alone (stacked drafters keep their top-k trees)."""
        for _, unit in self.groups:
            if not isinstance(unit, TreeDrafter):
                unit.sample_drafts(temperature, generator)

    def propose(self, tokens: torch.Tensor, features: torch.Tensor) -> list[DraftTree]:
        """Every member's tree, in member order."""
        trees: list[DraftTree | None] = [None] * len(self.members)
        for index, unit in self.groups:
            out = (
                unit.propose_all(tokens, features)
                if isinstance(unit, TreeDrafter)
                else [unit.propose(tokens, features)]
            )
            for i, tree in zip(index, out):
                trees[i] = tree
        return trees


def _lockstep(a: Proposer, b: Proposer) -> bool:
    return (
        isinstance(a, DrafterProposer)
        and isinstance(b, DrafterProposer)
        and a.shape == b.shape
        and stackable(a.drafter, b.drafter)
    )


def tree_confidence(tree: DraftTree) -> float:
    """Mean cumulative confidence exp(score) over the kept nodes (0 for an empty tree)."""
    return float(tree.scores.exp().mean()) if len(tree) else 0.0


def tree_entropy(tree: DraftTree) -> float:
    """Mean draft entropy over the kept nodes (inf for an empty or entropy-less tree: never preferred)."""
    finite = tree.entropies[torch.isfinite(tree.entropies)]
    return float(finite.mean()) if len(finite) else math.inf


class RoutedProposer(Proposer):
    """Verify only the tree of the member with the best score: highest mean confidence, or lowest
    mean entropy, each smoothed over the steps of a generation (an exponential moving average with
    weight `smoothing` on the past; 0 = this step alone). One step's signal swings with the drafters'
    certainty at that one position, while which member suits a reply is mostly a property of the
    reply (its domain). Smoothed, confidence routing sent 98-100% of GSM8K and SVAMP steps to the math
    drafter (75-83% step by step) and gained 1.6% tau at T = 0 for the EAGLE-2 pair, level for the
    HASS pair (`docs/paper-comparisons.md`, "Smoothed routing"). `choices` and `history` (per step
    since reset) let evaluation study the router."""

    def __init__(
        self,
        members: list[Proposer],
        signal: str = "confidence",
        batched: bool = True,
        smoothing: float = 0.8,
    ):
        if len(members) < 2 or signal not in ("confidence", "entropy"):
            raise ValueError("routing needs >= 2 members and signal 'confidence' or 'entropy'")
        if not 0 <= smoothing < 1:
            raise ValueError(f"router smoothing must be in [0, 1), got {smoothing}")
        self.members, self.signal, self.smoothing = members, signal, smoothing
        self.committee = Committee(members, batched)
        self.name = f"route:{signal}"
        self.choices: list[int] = []
        self.history: list[list[DraftTree]] = []  # every member's tree, per step since reset
        self._smoothed: list[float | None] | None = None

    def reset(self) -> None:
        self.choices, self.history, self._smoothed = [], [], None
        self.committee.reset()

    def attach_budget(self, budget) -> None:
        self.committee.attach_budget(budget)

    def propose(self, tokens: torch.Tensor, features: torch.Tensor) -> DraftTree:
        trees = self.committee.propose(tokens, features)
        self.history.append(trees)
        scores = self._smooth([self.score(t) for t in trees])
        self.choices.append(max(range(len(scores)), key=lambda i: scores[i]))
        return trees[self.choices[-1]]

    def score(self, tree: DraftTree) -> float:
        """This step's signal for one member's tree: higher is better."""
        return tree_confidence(tree) if self.signal == "confidence" else -tree_entropy(tree)

    def _smooth(self, scores: list[float]) -> list[float]:
        """The moving average of each member's signal; a step without a signal (an empty tree's
        -inf entropy) neither counts nor wins."""
        if self._smoothed is None:
            self._smoothed = [None] * len(scores)
        for i, s in enumerate(scores):
            if math.isfinite(s):
                old = self._smoothed[i]
                self._smoothed[i] = s if old is None else self.smoothing * old + (1 - self.smoothing) * s
        return [m if math.isfinite(s) else s for m, s in zip(self._smoothed, scores)]


def merge_trees(trees: list[DraftTree], budget: int | None = None) -> DraftTree:
    """Union of trees under the shared root as one trie: a path drafted by several members is one node
    (best score kept, source bits OR-ed). With `budget`, keep only the best `budget` nodes by score
    (ties to the shallower node, so a kept node's parent is always kept).

    Drawn nodes (a sampled chain's) are never merged: each keeps its own node and proposal row, the
    other nodes get all-zero rows, and the result is a mixed tree (`DraftTree`; the verifier lets a
    drawn node and a deterministic one that spell the same tokens continue each other's subtrees)."""
    tokens: list[int] = []
    parents: list[int] = []
    scores: list[float] = []
    entropies: list[float] = []
    sources: list[int] = []
    drawn_rows: dict[int, torch.Tensor] = {}  # merged node -> the proposal it was drawn from
    index: dict[tuple[int, int], int] = {}
    for tree in trees:
        local: list[int] = []
        drawn = tree.sampled_nodes.tolist()
        for i in range(len(tree)):
            p = int(tree.parents[i])
            key = (local[p] if p >= 0 else -1, int(tree.tokens[i]))
            if not drawn[i] and key in index:
                j = index[key]
                scores[j] = max(scores[j], float(tree.scores[i]))
                sources[j] |= int(tree.sources[i])
            else:
                j = len(tokens)
                if drawn[i]:
                    drawn_rows[j] = tree.proposals[i]
                else:
                    index[key] = j
                tokens.append(key[1])
                parents.append(key[0])
                scores.append(float(tree.scores[i]))
                entropies.append(float(tree.entropies[i]))
                sources.append(int(tree.sources[i]))
            local.append(j)
    merged = DraftTree(
        torch.tensor(tokens, dtype=torch.long),
        torch.tensor(parents, dtype=torch.long),
        torch.tensor(scores),
        torch.tensor(entropies),
        torch.tensor(sources, dtype=torch.long),
        *_proposals(trees, drawn_rows, len(tokens)),
    )
    return merged if budget is None else merged.best(budget)


def _proposals(
    trees: list[DraftTree], rows: dict[int, torch.Tensor], m: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The merged tree's proposals [m, v] (zero rows for its deterministic nodes) and their ids, on
    the host with the rest of the merged tree (a drafter on a GPU drafts them there)."""
    if not rows:
        return None, None
    ids = [t.proposal_ids.cpu() for t in trees if t.sampled and bool(t.sampled_nodes.any())]
    if any(not torch.equal(ids[0], other) for other in ids[1:]):
        raise ValueError("merged sampled trees must draw over one vocabulary (proposal_ids)")
    first = next(iter(rows.values()))
    proposals = torch.zeros(m, first.shape[-1], dtype=first.dtype)
    for j, row in rows.items():
        proposals[j] = row.cpu()
    return proposals, ids[0]


class MergedProposer(Proposer):
    """All members' trees merged into one trie and verified in one target pass; `budget` cuts the
    merged tree to a fixed node count (equal verification cost to a single drafter)."""

    def __init__(
        self, members: list[Proposer], budget: int | None = None, batched: bool = True, draws: bool = False
    ):
        if len(members) < 2:
            raise ValueError("merging needs >= 2 members")
        self.members, self.budget, self.draws = members, budget, draws
        self.committee = Committee(members, batched)
        self.name = "merged" if budget is None else "merged:cut"
        self.history: list[list[DraftTree]] = []  # every member's tree, per step since reset

    def reset(self) -> None:
        self.history = []
        self.committee.reset()

    def attach_budget(self, budget) -> None:
        self.committee.attach_budget(budget)

    def sample_drafts(self, temperature: float, generator: torch.Generator) -> None:
        """With `draws` (`taps.drafters.with_lookup`), a lone member that drafts by sampling at this
        temperature does so beside the others' deterministic nodes (a mixed tree); otherwise every
        member drafts its top-k tree, as merged learned drafters do at every temperature."""
        if self.draws:
            self.committee.sample_drafts(temperature, generator)

    def propose(self, tokens: torch.Tensor, features: torch.Tensor) -> DraftTree:
        self.history.append(self.committee.propose(tokens, features))
        return merge_trees(self.history[-1], self.budget)


def greedy_match(tree: DraftTree, continuation: list[int]) -> int:
    """Drafted tokens greedy verification would accept from `tree` if the target continues with
    `continuation`: the depth of the longest root path spelling its prefix. At T = 0 the realised
    output is the target's own continuation, so this scores every member's tree offline, with no
    extra target forward (the oracle that router accuracy is measured against)."""
    node, depth = -1, 0
    for token in continuation:
        children = ((tree.parents == node) & (tree.tokens == token)).nonzero()
        if len(children) == 0:
            break
        node, depth = int(children[0]), depth + 1
    return depth
