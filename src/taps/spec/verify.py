"""Tree verification: which drafted nodes the target accepts, and the bonus token after them.

Both rules are lossless: greedy reproduces the target's argmax path exactly, and the sampling rule
makes each emitted token follow the target's own distribution: for deterministic drafts (top-k
trees, copied tokens) a child x is accepted with the residual probability p(x); a child drawn from
the drafter's distribution q (a sampled tree) with probability min(1, p(x) / q(x)), and after a
rejection the residual is (p - q)+, renormalised (speculative sampling). A mixed tree holds both.
`logits[0]` belongs to the root, `logits[i + 1]` to node i.

For a tree of deterministic drafts alone, accepting child x with the residual probability, child by
child, picks among the children and the bonus exactly as one draw y from p would: x is emitted
with probability p(x), any other token as the bonus with its own p. So the loop draws y itself, from
a generator keyed by the reply's seed and y's place in the reply (`Draws`), and accepts the child
spelling y, if any. A token's draw then depends on nothing but its place and the distribution there:
not on the tree, whose size the tree budget chooses from the machine's timings; so at a given seed
speculative sampling emits plain sampling's tokens wherever a tree's rows round as plain steps do
(bf16 on a CPU; in float32 rounding can move a draw that falls right at a boundary between two
tokens), and a seed reproduces a reply whatever the timings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from taps.spec.tree import DraftTree


def derived_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (a seed and a place, say), the same on every platform and
    Python (splitmix64 steps; Python's own hash of a tuple is neither across versions and word sizes)."""
    state = 0
    for part in parts:
        state = (state + (part & (1 << 64) - 1) + 0x9E3779B97F4A7C15) & ((1 << 64) - 1)
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
        state = z ^ (z >> 31)
    return state >> 1


class Draws:
    """The target's draw at each place of a reply, keyed by (seed, place): independent across places,
    and the same whichever forward (a plain step, a tree's root, an accepted node) computes it."""

    def __init__(self, seed: int):
        self.seed = seed

    def token(self, probs: torch.Tensor, place: int) -> int:
        """Inverse-CDF sampling with one uniform: ~90 us over a 49k vocabulary on a CPU, where
        torch.multinomial took ~1 ms (a plain sampled step is ~30 ms). `right=True` never lands
        on a zero-probability token."""
        key = derived_seed(self.seed, place)
        uniform = torch.rand((), generator=torch.Generator().manual_seed(key), dtype=torch.float64)
        cdf = probs.double().cumsum(-1)
        return int(torch.searchsorted(cdf, uniform * cdf[-1], right=True).clamp_(max=len(cdf) - 1))


@dataclass
class Verdict:
    accepted: list[int]  # node indices along the accepted path, root's child first
    bonus: int  # the target's own token after the last accepted node


NUCLEUS_PROBE = 256  # top_p: the likeliest tokens looked at first, before sorting the whole vocabulary


def target_probs(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """The distribution the target samples from at `temperature` (nucleus-truncated if top_p < 1).

    The nucleus is the smallest set of likeliest tokens whose mass reaches top_p. Where the
    `NUCLEUS_PROBE` likeliest already reach it (a peaked distribution, the usual case) no other token
    can be in it, and their top-k is all that is sorted: ~0.3 ms a row over 49k tokens on a CPU where
    sorting them all took ~4 ms (a plain step is ~30 ms); a flatter row sorts everything.

    Each row's bits depend on that row alone, whatever rows it comes with: keyed draws give the
    target's own reply only if a row computed among a tree's rows (on CUDA, all at once) draws as it
    does alone in a plain step. So a peaked row keeps its probe's arithmetic even where a flat row
    beside it makes the batch sort everything, and a row is renormalised by its kept prefix's running
    sum, not by a sum over the row, whose order of addition changes with the number of rows (it did
    on a CPU: 1 ulp in every kept entry of a flat row among 9)."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return probs
    head, order = probs.topk(min(NUCLEUS_PROBE, probs.shape[-1]), dim=-1)
    nucleus = _renormalised_prefix(head, order, top_p, probs)
    wide = head.cumsum(-1)[..., -1:] < top_p  # rows whose nucleus reaches past the probe
    if bool(wide.any()):
        full = _renormalised_prefix(*probs.sort(dim=-1, descending=True), top_p, probs)
        nucleus = torch.where(wide, full, nucleus)
    return nucleus


def _renormalised_prefix(
    sorted_p: torch.Tensor, order: torch.Tensor, top_p: float, probs: torch.Tensor
) -> torch.Tensor:
    """The smallest prefix of `sorted_p` whose mass reaches top_p (the first token always stays),
    divided by that mass and scattered back to vocabulary order."""
    mass = sorted_p.cumsum(-1)
    drop = (mass - sorted_p) >= top_p
    kept = mass.gather(-1, (~drop).sum(-1, keepdim=True) - 1)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_p.masked_fill(drop, 0.0) / kept)


def verify_greedy(tree: DraftTree, logits: torch.Tensor) -> Verdict:
    """Follow the child whose token is the target's argmax until none is."""
    best = logits.argmax(dim=-1).tolist()
    children = tree.children()
    tokens = tree.tokens.tolist()
    accepted: list[int] = []
    row = 0
    while True:
        nxt = next((c for c in children[row] if tokens[c] == best[row]), None)
        if nxt is None:
            return Verdict(accepted, best[row])
        accepted.append(nxt)
        row = nxt + 1


def verify_sampling(
    tree: DraftTree,
    logits: torch.Tensor,
    temperature: float,
    generator: torch.Generator,
    top_p: float = 1.0,
    draws: Draws | None = None,
    place: int = 0,
) -> Verdict:
    """With `draws` and no drawn node in the tree: accept the children spelling the target's own draws,
    the root's at `place` in the reply (`verify_by_draws`). Otherwise: walk down from the root trying
    each accepted prefix's candidates, deterministic ones first: a deterministic child x is accepted
    with the residual probability p(x), else p(x) is zeroed; a drawn child with min(1, p(x) / q(x)),
    else p becomes (p - q)+; p is renormalised after each rejection, and if no candidate is accepted
    the bonus token is drawn from the residual.

    A prefix's candidates are the children of every node that spells it: a mixed tree keeps a drawn
    chain apart from the deterministic nodes (`taps.spec.combine.merge_trees`), so a copied token and
    a drawn one can spell the same prefix; once one is accepted, the other's subtree continues it too.
    That is exact because no node is kept or left out by its own drawn token (`DraftTree.best`):
    a drawn child not tried yet still follows its q. (Trying drawn children last keeps a
    copied continuation, often the longer one, reachable whatever the chain drew.)"""
    drawn = tree.sampled_nodes.tolist()
    if draws is not None and not any(drawn):
        if logits.is_cuda:  # every row on the GPU and one transfer, not one host round trip a row
            rows = target_probs(logits, temperature, top_p).cpu()
            return verify_by_draws(tree, rows.__getitem__, draws, place)
        return verify_by_draws(  # on a CPU the rows of the accepted path alone
            tree, lambda row: target_probs(logits[row], temperature, top_p), draws, place
        )
    probs = target_probs(logits, temperature, top_p).cpu()  # the generator and the walk live on the host
    children = tree.children()
    tokens = tree.tokens.tolist()
    accepted: list[int] = []
    spelling = [-1]  # the nodes whose path spells the accepted prefix (-1: the root)
    while True:
        p = probs[spelling[0] + 1].clone()
        candidates = sorted((c for s in spelling for c in children[s + 1]), key=lambda c: drawn[c])
        nxt = None
        for c in candidates:
            x = tokens[c]
            if drawn[c]:
                q = torch.zeros_like(p).index_put_((tree.proposal_ids,), tree.proposals[c].float())
                if float(torch.rand((), generator=generator)) * float(q[x]) < float(p[x]):
                    nxt = c
                    break
                p = (p - q).clamp_(min=0.0)
            else:
                px = float(p[x])
                if px > 0.0 and float(torch.rand((), generator=generator)) < px:
                    nxt = c
                    break
                p[x] = 0.0
            total = float(p.sum())
            if total <= 0.0:  # x held all the mass (or q covered p): only float rounding rejects it
                nxt = c
                break
            p /= total
        if nxt is None:
            return Verdict(accepted, int(torch.multinomial(p, 1, generator=generator)))
        accepted.append(nxt)
        # a rejected candidate zeroed its token's residual, so every other candidate spelling the
        # accepted token comes later in the order: untried, its subtree still exact to continue into
        spelling = [nxt, *(c for c in candidates if c != nxt and tokens[c] == tokens[nxt])]


def verify_by_draws(
    tree: DraftTree, probs: Callable[[int], torch.Tensor], draws: Draws, place: int
) -> Verdict:
    """Follow a child whose token is the target's draw at each place (the root's at `place`) until
    none is; that draw is the bonus. The deterministic-draft rule, drawn once per emitted token. As in
    `verify_sampling`, every node spelling the accepted prefix offers its children (a tree whose
    siblings repeat a token, as two proposers' may, keeps both subtrees in reach). `probs(row)`: the
    target's distribution at a row, computed for the rows of the accepted path only (with top_p, a
    whole tree's would cost far more than the walk)."""
    children = tree.children()
    tokens = tree.tokens.tolist()
    accepted: list[int] = []
    spelling = [-1]  # the nodes whose path spells the accepted prefix (-1: the root)
    while True:
        drawn = draws.token(probs(spelling[0] + 1), place + len(accepted))
        spelling = [c for s in spelling for c in children[s + 1] if tokens[c] == drawn]
        if not spelling:
            return Verdict(accepted, drawn)
        accepted.append(spelling[0])


def sample_token(
    logits: torch.Tensor, temperature: float, draws: Draws, place: int, top_p: float = 1.0
) -> int:
    """The token at `place` of a reply: the argmax at temperature 0, else the target's draw there."""
    if temperature <= 0:
        return int(logits.argmax())
    return draws.token(target_probs(logits, temperature, top_p).cpu(), place)
