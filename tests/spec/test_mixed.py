"""Mixed trees: a drafter's sampled chain beside prompt lookup's copied tokens (`--lookup` at T > 0).
Each piece must stay exact: the merge keeps drawn nodes apart, the cuts never look at a drawn token,
and the verifier (copied tokens first, then drawn ones, subtrees of equal spellings joined) emits the
target's distribution."""

from dataclasses import replace

import numpy as np
import pytest
import torch

import taps.spec.costs
from taps.drafters import make_strategy
from taps.models.checkpoint import save_drafter
from taps.spec.budget import _exact_choice
from taps.spec.combine import merge_trees
from taps.spec.generate import GenerationConfig, SpeculativeGenerator
from taps.spec.propose import AUTO_SHAPE, TreeShape
from taps.spec.tree import DraftTree
from taps.spec.verify import target_probs, verify_sampling
from tests.conftest import random_drafter
from tests.spec.test_budget import FLAT, _Loaded
from tests.spec.test_sampling import _chi2_ok, _sampling_target

IDS = torch.tensor([0, 1, 2, 3, 5])  # the chain's draft vocabulary: token 4 is never drawn


def _chain(tokens: list[int], proposals: torch.Tensor, scores: list[float] | None = None) -> DraftTree:
    m = len(tokens)
    return DraftTree(
        tokens=torch.tensor(tokens),
        parents=torch.arange(m) - 1,
        scores=torch.tensor(scores or [-0.5 * (i + 1) for i in range(m)]),
        entropies=torch.zeros(m),
        sources=torch.ones(m, dtype=torch.long),
        proposals=proposals,
        proposal_ids=IDS,
    )


def _copied() -> DraftTree:
    """Prompt lookup's tree: 2 -> 1 and 4 at the root (source bit 1)."""
    return DraftTree.from_paths([[2, 1], [4]], source=1, confidences=[[0.6, 0.6], [0.3]])


def test_merge_keeps_drawn_nodes_apart_from_copied_ones():
    q = torch.softmax(torch.randn(2, len(IDS), generator=torch.Generator().manual_seed(0)), -1)
    mixed = merge_trees([_chain([2, 3], q), _copied()])
    assert mixed.tokens.tolist() == [2, 3, 2, 1, 4]  # the drawn 2 and the copied 2 stay two nodes
    assert mixed.parents.tolist() == [-1, 0, -1, 2, -1]
    assert mixed.sampled_nodes.tolist() == [True, True, False, False, False]
    assert torch.equal(mixed.proposals[:2], q) and not mixed.proposals[2:].any()
    assert torch.equal(mixed.proposal_ids, IDS)
    assert merge_trees([_copied(), _copied()]).proposals is None  # nothing drawn: a plain trie
    other = _chain([2], q[:1])
    other.proposal_ids = torch.tensor([0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match="one vocabulary"):
        merge_trees([_chain([2], q[:1]), other])


@pytest.mark.parametrize("chain_scores", [[-0.1, -0.2, -0.3], [-3.0, -4.0, -5.0]])
def test_cuts_keep_copied_nodes_whatever_the_chain_drew(chain_scores):
    """Which copied nodes survive a cut may not depend on the chain (its scores follow its draws), and
    the chain keeps a leading run."""
    q = torch.full((3, len(IDS)), 1 / len(IDS))
    mixed = merge_trees([_chain([2, 3, 5], q, chain_scores), _copied()])
    kept = mixed.best(4)
    assert kept.tokens.tolist() == [2, 2, 1, 4] and kept.sampled_nodes.tolist() == [True, False, False, False]
    assert mixed.best(2).sampled_nodes.tolist() == [True, False]  # one place is left for the chain
    price = torch.tensor([0.0, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 9.0], dtype=torch.float64)
    p = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.05])  # nodes 0-2 drawn, 3-5 copied
    drawn = torch.tensor([True, True, True, False, False, False])
    order = torch.argsort(-p, stable=True)
    chosen = _exact_choice(drawn, p, order, price, least=0, most=6)
    assert chosen.tolist() == [3, 4, 0, 1, 2]  # copied by what pays alone, then the chain node by node
    p[:3] = torch.tensor([0.01, 0.01, 0.01])  # another draw: the copied choice does not move
    assert _exact_choice(drawn, p, torch.argsort(-p, stable=True), price, 0, 6).tolist() == [3, 4]
    assert _exact_choice(drawn, p * 0, order, price, least=1, most=6).tolist() == [3]  # a probe


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.6, 1.0), (1.0, 0.8)])
def test_verifier_emits_target_distribution_for_mixed_trees(temperature, top_p):
    """Copied nodes 2 -> 1 and 4 beside a chain drawn from q: the first and second emitted tokens
    follow the target, also when a copied 2 is accepted and the chain, which drew 2 too, goes on."""
    vocab, g = 6, torch.Generator().manual_seed(0)
    root = torch.randn(vocab, generator=g) * 1.5
    root[2] += 6.0  # a copied 2 is often right
    after = torch.randn(vocab, vocab, generator=g) * 1.5  # the target's logits after each first token
    q = torch.softmax(torch.randn(2, len(IDS), generator=g), -1)
    q[0, 2] += 1.0  # the chain often draws 2 too
    q[0] /= q[0].sum()
    q[1] = torch.softmax(after[2, IDS], -1)  # and then drafts what the target says after a 2
    gen = torch.Generator().manual_seed(1)
    first, second, joined = np.zeros(vocab), np.zeros(vocab), 0
    for _ in range(20000):
        draws = [int(IDS[torch.multinomial(q[i], 1, generator=gen)]) for i in range(2)]
        tree = merge_trees([_chain(draws, q), _copied()])
        # rows: root, then each node's own: a node's row is the target after its path's first token
        depth1 = [after[t] for t in tree.tokens.tolist()]
        logits = torch.stack([root, *depth1])
        v = verify_sampling(tree, logits, temperature, gen, top_p)
        emitted = tree.tokens[v.accepted].tolist() + [v.bonus]
        first[emitted[0]] += 1
        if emitted[0] == 2:
            second[emitted[1]] += 1
        joined += v.accepted[:2] == [2, 1]  # the copied 2, then the chain's second draw
    p = target_probs(torch.cat([root[None], after]), temperature, top_p).numpy()
    assert joined > 300
    assert _chi2_ok(first, p[0])
    assert second.sum() > 1000 and _chi2_ok(second, p[1 + 2])


SAMPLED_SHAPES = [TreeShape(3, 3, 8, drafts="sampled"), replace(AUTO_SHAPE, drafts="sampled")]


@pytest.mark.parametrize("shape", SAMPLED_SHAPES, ids=["fixed", "auto"])
def test_drafter_chain_with_lookup_follows_the_target_distribution(tmp_path, shape, monkeypatch):
    """End to end through `make_strategy(..., lookup="on")` with `--drafts sampled` (under a fixed
    tree and under the budget): the drafter's chain and prompt lookup's copies in one tree, accepted
    from both, and the second token follows the target. `--drafts auto` keeps the top-k tree there."""
    monkeypatch.setattr(taps.spec.costs, "load_or_measure", lambda model, **kw: FLAT)  # all nodes pay
    target, prompt, p2 = _sampling_target(tmp_path / "target", prompt=(0, 3, 7, 3, 7, 3))
    folder = tmp_path / "drafter"
    save_drafter(random_drafter(target, seed=2), folder, target.fingerprint())
    proposer = make_strategy("single", [str(folder)], _Loaded(target), shape, lookup="on")
    gen = SpeculativeGenerator(target, proposer)
    counts, by_source = np.zeros(len(p2)), {1: 0, 2: 0}
    for seed in range(3000):
        out = gen.generate(prompt, GenerationConfig(max_new_tokens=2, temperature=1.0, seed=seed))
        counts[out.tokens[1]] += 1
        for s in out.steps[0].accepted_sources:
            by_source[s] += 1
    merged = getattr(proposer, "inner", proposer)
    assert merged.members[0].trees.sampling is not None  # the drafter really drew its chain
    auto = make_strategy("single", [str(folder)], _Loaded(target), AUTO_SHAPE, lookup="on")
    SpeculativeGenerator(target, auto).generate(prompt, GenerationConfig(max_new_tokens=2, temperature=1.0))
    assert auto.inner.members[0].trees.sampling is None
    # drawn nodes accepted: ~1200 of 3000 first steps under the fixed tree; under the budget, which
    # verifies few nodes of this random tiny drafter, ~50 (a count that moves with the draws' stream)
    assert by_source[1] > (500 if shape.budget == "fixed" else 20)
    if shape.budget == "fixed":  # (the budget verifies few copied tokens of a random tiny target)
        assert by_source[2] > 100  # and copied ones
    assert _chi2_ok(counts, p2.numpy())
