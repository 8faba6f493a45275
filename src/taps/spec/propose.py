"""Proposers, and the EAGLE-2 dynamic draft tree built by one drafter.

A proposer is told, once per step, the committed tokens (the root, i.e. the last verified token,
last) and the target features of the newly committed positions, and returns a DraftTree under
the root. The verifier never sees how the tree was made, so new proposers plug in freely.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from taps.models.drafter import Drafter
from taps.models.graphs import GraphedDrafter, capture
from taps.models.stacked import stack_drafters
from taps.spec.tree import DraftTree
from taps.spec.vocabulary import context_vocabulary

VOCABULARIES = ("auto", "trained", "context", "whole")


class Proposer(ABC):
    """Drafts a tree each step. `features[i]` is the target feature paired with `tokens[-len(features) + i]`
    (EAGLE pairs the feature at position t with the token at t + 1)."""

    name: str = "proposer"

    def reset(self) -> None:
        """Forget the previous sequence (called before each prefill)."""

    @abstractmethod
    def propose(self, tokens: torch.Tensor, features: torch.Tensor) -> DraftTree: ...

    def observe(self, record) -> None:
        """Told every step's StepRecord after verification (proposers that learn online override it)."""

    def attach_budget(self, budget) -> None:
        """Let a TreeBudget stop this proposer's drafting early (level-by-level drafters override it)."""

    def sample_drafts(self, temperature: float, generator: torch.Generator) -> None:
        """Told before each generation its sampling temperature (0: greedy) and a generator of its own:
        a proposer that can draft by sampling at that temperature (`TreeShape.drafts`) does so."""


# `--drafts auto` draws chains from this temperature up. What a drawn token gains over a top-1 one
# shrinks as the target sharpens (eagle2-mixed, one level: +22-31% at T = 1, +4-8% at T = 0.6,
# `benchmarks/sampled_drafts.py`), while a top-k tree still gains from its width: on a Zen 4 EPYC
# the budget's top-k trees ran 1.083x (1.035-1.135) as fast as its drawn chains at T = 0.6 and 1.060x
# (1.012-1.115) at T = 0.8, and level at T = 1 (three runs, 0.96-1.02x); at T = 1 on the AVX2 EPYC
# the chains were ahead (docs/speed-cpu.md, "Sampled drafts at T > 0").
SAMPLED_FROM = 1.0


@dataclass(frozen=True)
class TreeShape:
    """EAGLE-2 dynamic-tree knobs: children per expanded node and expanded nodes per level (`top_k`),
    maximum depth, and the number of nodes kept for verification (`total_tokens`).

    `budget="auto"` makes these limits: a TreeBudget (`taps.spec.budget`) then decides every step,
    from this machine's measured costs, how many of the nodes to verify (none at all when drafting
    does not pay) and whether to draft deeper; "fixed" verifies `total_tokens` nodes every step.
    `vocabulary`: the tokens a drafter scores at each node: "trained" (its draft vocabulary),
    "context" (that and every token of the context it lacks, `taps.spec.vocabulary`), "whole" (the
    target's; `Drafter.widen_vocabulary`), or "auto" (whole on a GPU, context on a CPU).
    `drafts`: "top-k" (each node's children are the drafter's best tokens), or "sampled": at T > 0 a
    lone drafter drafts a chain, each token drawn from its distribution at that temperature
    (`TreeDrafter._sample_chain`), also beside prompt lookup's copied tokens (a mixed tree,
    `taps.drafters.with_lookup`); at T = 0, and in combinations of drafters, the top-k tree. "auto":
    sampled where a budget drafts level by level (a CPU under `--tree auto`, where trees are a few
    nodes and a drawn token is accepted more often than a top-1 one) at T >= SAMPLED_FROM, top-k
    below it, where whole trees are verified and beside prompt lookup."""

    top_k: int = 8
    depth: int = 5
    total_tokens: int = 24
    budget: str = "fixed"
    vocabulary: str = "auto"
    drafts: str = "auto"

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.depth < 1 or self.total_tokens < 1:
            raise ValueError(f"tree shape needs top_k, depth, total_tokens >= 1, got {self}")
        if self.budget not in ("auto", "fixed"):
            raise ValueError(f"tree budget must be 'auto' or 'fixed', got {self.budget!r}")
        if self.vocabulary not in VOCABULARIES:
            raise ValueError(
                f"draft vocabulary must be one of {', '.join(VOCABULARIES)}, got {self.vocabulary!r}"
            )
        if self.drafts not in ("auto", "top-k", "sampled"):
            raise ValueError(f"drafts must be 'auto', 'top-k' or 'sampled', got {self.drafts!r}")


AUTO_SHAPE = TreeShape(top_k=8, depth=6, total_tokens=48, budget="auto")  # limits for the auto budget
# The fixed tree `--tree auto` drafts on a GPU that verifies 64 tokens for about the price of one
# (`taps.spec.budget.flat_tree_shape`): the default tree's levels, 63 nodes kept (64 rows with the root,
# the largest graph bucket, and the rows every bf16 forward is padded to anyway). On 10 prompts at T = 0
# (CI-class EPYC, float32, `taps eval --tree fixed --total-tokens 63`) it raised tau over 8/5/24 from
# 2.49 to 2.68 (eagle2-chat, MT-Bench) and from 3.41 to 3.72 (eagle2-math, GSM8K); a sixth level or
# 10 children per node added nothing.
FLAT_SHAPE = TreeShape(top_k=8, depth=5, total_tokens=63)


class DrafterProposer(Proposer):
    """EAGLE-2 with one drafter (see TreeDrafter)."""

    def __init__(
        self, drafter: Drafter, shape: TreeShape = TreeShape(), source: int = 0, name: str = "drafter"
    ):
        self.drafter, self.shape, self.source, self.name = drafter, shape, source, name
        self._trees: TreeDrafter | None = None
        self.budget = None

    @property
    def trees(self) -> TreeDrafter:
        """Built on first use: a member of a stacked committee never drafts alone, so never needs one."""
        if self._trees is None:
            self._trees = TreeDrafter([self.drafter], self.shape, [self.source])
            self._trees.budget = self.budget
        return self._trees

    def attach_budget(self, budget) -> None:
        self.budget = budget
        if self._trees is not None:
            self._trees.budget = budget

    def reset(self) -> None:
        self.trees.reset()

    def sample_drafts(self, temperature: float, generator: torch.Generator) -> None:
        wanted = self.shape.drafts == "sampled" or (
            self.shape.drafts == "auto" and self.budget is not None and temperature >= SAMPLED_FROM
        )
        self.trees.sampling = (temperature, generator) if wanted and temperature > 0 else None

    def propose(self, tokens: torch.Tensor, features: torch.Tensor) -> DraftTree:
        return self.trees.propose_all(tokens, features)[0]


class TreeDrafter:
    """EAGLE-2 dynamic trees for N same-shape drafters in lockstep: expand the best `top_k` frontier
    nodes by cumulative log-prob, `depth` levels deep, then keep the `total_tokens` best nodes (a kept
    node's ancestors score at least as high). Every member's frontier has the same size at every
    level, so one stacked drafter forward per level serves all members (N = 1 for a lone drafter)."""

    def __init__(
        self,
        drafters: list[Drafter],
        shape: TreeShape,
        sources: list[int],
        graphs: bool | None = None,
        stacked: Drafter | None = None,
    ):
        """`graphs`: run the drafting forwards through CUDA graphs (`taps.models.graphs`; off CUDA,
        the same static path eagerly); default: on CUDA. `stacked`: the members already stacked (and
        packed), for benchmarks of the CPU kernels; by default they are stacked and packed here."""
        self.model = stacked if stacked is not None else stack_drafters(drafters).pack_for_cpu()
        self.shape, self.sources = shape, sources
        use_graphs = self.model.device.type == "cuda" if graphs is None else graphs
        self.forward = GraphedDrafter(self.model) if use_graphs else self.model
        self.budget = None  # a TreeBudget may stop the levels early (see `_expand`)
        self.context = context_vocabulary(self.model, shape.vocabulary)  # tokens added per sequence
        self.sampling: tuple[float, torch.Generator] | None = None  # (T, generator): `_sample_chain`
        self.whole = False  # this step's expansion runs as one piece (`whole_expansion`, set per step)
        # the committed pairs as a device tensor: the whole-expansion path's offsets (`_expand_static`)
        self.base = torch.zeros((), dtype=torch.long, device=self.model.device)
        self._root: torch.Tensor | None = None  # the captured expansion's input buffer
        self.reset()

    def reset(self) -> None:
        self.cache = self.forward.new_cache()
        self.pairs = 0  # verified (feature, token) pairs in the cache
        if self.context is not None:
            self.context.reset()

    @torch.inference_mode()
    def propose_all(self, tokens: torch.Tensor, features: torch.Tensor) -> list[DraftTree]:
        n, m = len(self.sources), features.shape[0]
        self.cache.length = self.pairs  # drop last step's drafted entries
        if self.context is not None:  # the newly committed tokens (the whole prompt at first)
            self.context.add(tokens[-m:])
        positions = torch.arange(self.pairs, self.pairs + m, device=features.device)
        start = time.perf_counter()
        hidden = self.forward(  # only the last pair is drafted from: the others enter the cache alone
            tokens[-m:].expand(n, m), features.expand(n, *features.shape), positions, self.cache, keep=1
        )
        self.pairs += m
        if self.budget is not None:
            self.budget.ingested((time.perf_counter() - start) * 1000)
        if self.sampling is not None and n == 1:
            self.whole = False
            return [self._sample_chain(hidden[:, -1:], self.sources[0])]
        self.whole = self.whole_expansion
        if self.whole:
            pool = self._expand_static(hidden[:, -1:])
        else:
            pool = self._expand(hidden[:, -1:])
        return [pool.best_tree(i, self.shape.total_tokens, s) for i, s in enumerate(self.sources)]

    @property
    def whole_expansion(self) -> bool:
        """Whether a step's expansion runs as one piece on the static cache (one CUDA graph on CUDA):
        with graphs, and a fixed shape or a budget that prices the shape's whole tree near one forward
        (`TreeBudget.verifies_freely`). Otherwise a budget decides between levels, on the host."""
        if not isinstance(self.forward, GraphedDrafter) or self.context is not None:
            return False  # (a context vocabulary changes the head's size as the sequence grows)
        return self.budget is None or self.budget.verifies_freely(self.shape.total_tokens)

    @property
    def budgeted_levels(self) -> bool:
        """Whether the budget decides level by level how far to draft (`_expand`)."""
        return self.budget is not None and not self.whole

    def _expand_static(self, root_hidden: torch.Tensor) -> _Pool:
        """`_expand` for a fixed shape on the static cache, as one CUDA graph on CUDA (captured on first
        use, replayed after; eagerly elsewhere): levels go through `GraphedDrafter.forward_at`, whose
        offsets come from `self.base`, so no value of this step is baked into the graph."""
        graphs, k = self.forward, self.shape.top_k
        graphs.reserve_rows(self.pairs + k * (self.shape.depth - 1))
        self.base.fill_(self.pairs)
        if not graphs.capture:
            return self._expand(root_hidden)
        key = ("expansion", root_hidden.shape)
        if key not in graphs.graphs:  # (re)captured whenever the cache grows: `_rebuild` drops graphs
            self._root = root_hidden.clone()  # a private memory pool: its outputs are read after replay
            graphs.graphs[key] = capture(lambda: self._expand(self._root), self.model.device, None)
        self._root.copy_(root_hidden)
        graph, pool = graphs.graphs[key]
        graph.replay()
        return pool

    def _expand(self, root_hidden: torch.Tensor) -> _Pool:
        """root_hidden [N, 1, H] -> every candidate node of every member, scored. Under a budget, each
        level expands only the frontier nodes whose descendants could still pay for their drafting and
        verification (`TreeBudget.frontier_width`), and drafting stops when none could."""
        k = self.shape.top_k
        pool = _Pool(len(self.sources), root_hidden.device)
        logp, ent = self._log_probs(root_hidden)
        top = logp[:, 0].topk(min(k, logp.shape[-1]))
        frontier = pool.add(
            self._target_ids(top.indices),
            torch.full_like(top.indices, -1),
            top.values,
            ent.expand_as(top.values),
        )
        parent_hidden = root_hidden.expand(-1, frontier.shape[1], -1)
        # each drafted cache slot's ancestors among the drafted slots
        slot_anc = torch.zeros(len(self.sources), 0, 0, dtype=torch.bool, device=pool.device)
        for level in range(1, self.shape.depth):
            if self.budgeted_levels:  # frontier columns are sorted by score: expand the best `keep`
                keep = self.budget.frontier_width(
                    pool.scores, pool.depth, pool.scores.gather(1, frontier), level
                )
                if keep == 0:
                    break
                frontier, parent_hidden = frontier[:, :keep], parent_hidden[:, :keep]
            start = time.perf_counter()
            hidden, slot_anc = self._forward_level(frontier, pool, parent_hidden, slot_anc, level)
            logp, ent = self._log_probs(hidden)
            width = min(k, logp.shape[-1])
            cand = (pool.scores.gather(1, frontier).unsqueeze(-1) + logp).topk(width, dim=-1)  # [N, f, width]
            parents = frontier.unsqueeze(-1).expand_as(cand.indices)
            children = pool.add(
                self._target_ids(cand.indices).flatten(1),
                parents.flatten(1),
                cand.values.flatten(1),
                ent.unsqueeze(-1).expand_as(cand.values).flatten(1),
            )
            best = pool.scores.gather(1, children).topk(min(k, children.shape[1]), dim=-1).indices
            frontier = children.gather(1, best)
            # children are laid out [parent row, width], so a child's parent row is its index // width
            parent_hidden = hidden.gather(1, (best // width).unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
            if self.budgeted_levels:
                self.budget.level_timed(parents.shape[1], (time.perf_counter() - start) * 1000)
        return pool

    def _sample_chain(self, root_hidden: torch.Tensor, source: int) -> DraftTree:
        """At T > 0 (`TreeShape.drafts`: sampled, or auto under a budget): a chain, each token drawn
        from the drafter's distribution q at the sampling temperature. Verified by speculative
        sampling, a drawn token is
        accepted with probability 1 - TV(p, q), a top-1 token with p(top-1) only: on the target's own
        T = 1 text, 0.565 against 0.432 per level for eagle2-math on GSM8K, 0.437 against 0.359 for
        eagle2-chat on MT-Bench (`benchmarks/sampled_drafts.py`). That is exact only if whether a node
        is drafted and verified never depends on its own token or its descendants': so a node scores
        its parent's score plus log max q (what a top-1 child would score, whatever was drawn), the
        budget decides level by level whether to draft on (`frontier_width`, which sees the chain so
        far), and it keeps a leading run of the chain without looking further down (`TreeBudget.choose`)."""
        temperature, generator = self.sampling
        pool = _Pool(1, root_hidden.device)
        proposals: list[torch.Tensor] = []
        hidden = root_hidden
        parent = torch.full((1, 1), -1, dtype=torch.long, device=pool.device)
        slot_anc = torch.zeros(1, 0, 0, dtype=torch.bool, device=pool.device)
        depth = min(self.shape.depth, self.shape.total_tokens)
        for level in range(depth):
            if level:
                if self.budgeted_levels and not self.budget.frontier_width(
                    pool.scores, pool.depth, pool.scores.gather(1, parent), level
                ):
                    break
                start = time.perf_counter()
                hidden, slot_anc = self._forward_level(parent, pool, hidden, slot_anc, level)
            q = torch.softmax(self._draft_logits(hidden)[0, -1] / temperature, dim=-1)
            draw = torch.multinomial(q.cpu(), 1, generator=generator).to(q.device)
            base = pool.scores[:, -1:] if level else torch.zeros(1, 1, device=pool.device)
            parent = pool.add(
                self._target_ids(draw.view(1, 1)),
                parent,
                base + q.max().log(),
                -(q * q.clamp(min=1e-30).log()).sum().view(1, 1),
            )
            proposals.append(q)
            if level and self.budgeted_levels:
                self.budget.level_timed(1, (time.perf_counter() - start) * 1000)
        m = len(proposals)
        return DraftTree(
            tokens=pool.tokens[0],
            parents=pool.parents[0],
            scores=pool.scores[0],
            entropies=pool.entropies[0],
            sources=torch.full((m,), 1 << source, dtype=torch.long, device=pool.device),
            proposals=torch.stack(proposals),
            proposal_ids=self._token_ids()[0],
        )

    def _forward_level(self, frontier, pool, parent_hidden, slot_anc, level):
        """Run the frontier nodes through the drafters; each sees the context and its drafted ancestors.
        Frontier node r of a level takes cache slot `drafted + r`; `slot_anc` holds each slot's ancestors."""
        n, f = frontier.shape
        drafted = slot_anc.shape[1]
        dev = frontier.device
        rows = torch.zeros(n, f, drafted + f, dtype=torch.bool, device=dev)
        if drafted:  # every frontier node below level 1 has a drafted parent: the previous level's frontier
            parent_slot = pool.slots.gather(1, pool.parents.gather(1, frontier))
            rows[:, :, :drafted] = slot_anc.gather(1, parent_slot.unsqueeze(-1).expand(-1, -1, drafted))
            rows[:, :, :drafted].scatter_(2, parent_slot.unsqueeze(-1), True)
        rows[:, :, drafted:] = torch.eye(f, dtype=torch.bool, device=dev)
        pool.slots.scatter_(1, frontier, (drafted + torch.arange(f, device=dev)).expand(n, f))
        grown = torch.zeros(n, drafted + f, drafted + f, dtype=torch.bool, device=dev)
        grown[:, :drafted, :drafted] = slot_anc
        grown[:, drafted:] = rows
        tokens = pool.tokens.gather(1, frontier)
        if self.whole:  # `_expand_static`
            return self.forward.forward_at(
                tokens, parent_hidden, rows.unsqueeze(1), self.base, drafted, level
            ), grown
        positions = torch.full((f,), self.pairs - 1 + level, device=dev)
        # rows cover the drafted slots and this level's; the committed context before them is seen by all
        hidden = self.forward(tokens, parent_hidden, positions, self.cache, tree_mask=rows.unsqueeze(1))
        return hidden, grown

    def _log_probs(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logp = torch.log_softmax(self._draft_logits(hidden), dim=-1)
        masked = self.context is not None and self.context.masked  # a member's -inf copies: 0 * -inf
        finite = logp.clamp(min=-1e30) if masked else logp
        entropy = -(logp.exp() * finite).sum(-1)
        return logp, entropy

    def _draft_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores over the draft vocabulary, then over the tokens the context added (if any)."""
        logits = self.model.draft_logits(hidden)
        if self.context is None or not len(self.context):
            return logits
        return torch.cat([logits, self.context.logits(hidden)], dim=-1)

    def _token_ids(self) -> torch.Tensor:
        """Draft ids -> target ids [N, V (+ K)]: each member's own d2t (and the context's tokens)."""
        return self.model.d2t if self.context is None else self.context.token_ids()

    def _target_ids(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary ids [N, ...] -> target token ids, through each member's own map."""
        return self._token_ids().gather(1, draft_ids.flatten(1)).view_as(draft_ids)


class _Pool:
    """Every candidate node drafted in one step by each of N members, before the best `total_tokens`
    are kept. Members grow in lockstep, so every field is [N, nodes]."""

    def __init__(self, members: int, device: torch.device) -> None:
        self.device = device
        self.tokens = torch.zeros(members, 0, dtype=torch.long, device=device)
        self.parents = torch.zeros(members, 0, dtype=torch.long, device=device)
        self.scores = torch.zeros(members, 0, device=device)
        self.entropies = torch.zeros(members, 0, device=device)
        self.depth = torch.zeros(members, 0, dtype=torch.long, device=device)
        # the drafter cache slot of a forwarded node, else -1
        self.slots = torch.zeros(members, 0, dtype=torch.long, device=device)

    def add(self, tokens, parents, scores, entropies) -> torch.Tensor:
        """Append [N, c] new nodes; returns their indices [N, c]."""
        start = self.tokens.shape[1]
        parent_depth = self.depth.gather(1, parents.clamp(min=0)) if start else torch.zeros_like(parents)
        depth = torch.where(parents < 0, 1, parent_depth + 1)
        self.tokens = torch.cat([self.tokens, tokens], dim=1)
        self.parents = torch.cat([self.parents, parents], dim=1)
        self.scores = torch.cat([self.scores, scores.float()], dim=1)
        self.entropies = torch.cat([self.entropies, entropies.float()], dim=1)
        self.depth = torch.cat([self.depth, depth], dim=1)
        self.slots = torch.cat([self.slots, torch.full_like(parents, -1)], dim=1)
        return torch.arange(start, self.tokens.shape[1], device=self.device).expand(len(tokens), -1)

    def best_tree(self, member: int, total: int, source: int) -> DraftTree:
        # Rank by score, ties to the shallower node, so every kept node's parent is kept too;
        # then order the kept nodes by depth (parents before children) and score.
        depth, scores = self.depth[member], self.scores[member]
        order = _stable_order(depth, -scores)[:total]
        keep = order[_stable_order(-scores[order], depth[order])]
        new_index = torch.full((len(depth),), -1, dtype=torch.long, device=self.device)
        new_index[keep] = torch.arange(len(keep), device=self.device)
        parents = self.parents[member, keep]
        parents = torch.where(parents >= 0, new_index[parents.clamp(min=0)], -1)
        return DraftTree(
            tokens=self.tokens[member, keep],
            parents=parents,
            scores=scores[keep],
            entropies=self.entropies[member, keep],
            sources=torch.full((len(keep),), 1 << source, dtype=torch.long, device=self.device),
        )


def _stable_order(minor: torch.Tensor, major: torch.Tensor) -> torch.Tensor:
    """Indices sorted ascending by `major`, ties by `minor`, then by index."""
    by_minor = torch.sort(minor, stable=True).indices
    return by_minor[torch.sort(major[by_minor], stable=True).indices]
