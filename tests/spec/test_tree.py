import pytest
import torch

from taps.spec.propose import DrafterProposer, TreeShape
from taps.spec.tree import DraftTree
from taps.spec.verify import verify_greedy
from tests.conftest import random_drafter


def test_trie_merges_shared_prefixes():
    tree = DraftTree.from_paths([[5, 6, 7], [5, 6, 8], [9], [5, 2]])
    assert tree.tokens.tolist() == [5, 6, 7, 8, 9, 2]
    assert tree.parents.tolist() == [-1, 0, 1, 1, -1, 0]
    assert tree.depths().tolist() == [1, 2, 3, 3, 1, 2]
    assert tree.children() == [[0, 4], [1, 5], [2, 3], [], [], [], []]


def test_best_keeps_the_top_nodes_closed_under_parents():
    # node 3 (child of 2) outscores its parent, as a merged trie can hold: it ranks by its path's min
    tree = DraftTree(
        tokens=torch.tensor([5, 6, 7, 8, 9]),
        parents=torch.tensor([-1, 0, -1, 2, 1]),
        scores=torch.tensor([-0.1, -0.5, -2.0, -0.2, -0.6]),
        entropies=torch.zeros(5),
        sources=torch.ones(5, dtype=torch.long),
    )
    assert tree.best(5) is tree and tree.best(9) is tree
    assert tree.best(3).tokens.tolist() == [5, 6, 9]
    cut = tree.best(4)
    assert cut.tokens.tolist() == [5, 6, 7, 9] and cut.parents.tolist() == [-1, 0, -1, 1]
    # equal scores (an n-gram trie scores every node 0): shallower first, so parents come along
    trie = DraftTree.from_paths([[1, 2, 3], [4, 5, 6]])
    assert trie.best(3).depths().tolist() == [1, 2, 1]


def test_mask_and_positions():
    tree = DraftTree.from_paths([[5, 6], [7]])
    tokens, positions, mask = tree.verification_inputs(root=3, base=10)
    assert tokens.tolist() == [3, 5, 6, 7]
    assert positions.tolist() == [10, 11, 12, 11]
    assert mask.int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 1]]


def test_parents_must_precede_children():
    with pytest.raises(ValueError):
        DraftTree(
            torch.tensor([1, 2]),
            torch.tensor([1, -1]),
            torch.zeros(2),
            torch.zeros(2),
            torch.zeros(2, dtype=torch.long),
        )


def test_greedy_walk_follows_argmax_and_returns_bonus():
    tree = DraftTree.from_paths([[4, 1], [2, 3]])  # nodes: 0:4, 1:1, 2:2, 3:3
    logits = torch.zeros(5, 6)
    logits[0, 2] = 1  # root -> 2 (node 2)
    logits[3, 3] = 1  # node 2 -> 3 (node 3)
    logits[4, 5] = 1  # node 3 -> bonus 5
    v = verify_greedy(tree, logits)
    assert v.accepted == [2, 3] and v.bonus == 5
    logits[0] = 0
    logits[0, 0] = 1
    assert verify_greedy(tree, logits).accepted == [] and verify_greedy(tree, logits).bonus == 0


@pytest.mark.parametrize("shape", [TreeShape(2, 4, 7), TreeShape(5, 3, 12), TreeShape(4, 6, 100)])
def test_eagle2_tree_is_well_formed(tiny_target, shape):
    drafter = random_drafter(tiny_target, seed=1)
    proposer = DrafterProposer(drafter, shape)
    ctx = torch.tensor([0, 4, 9, 13, 2])
    features = tiny_target(ctx, tiny_target.new_cache())
    tree = proposer.propose(torch.cat([ctx[1:], torch.tensor([7])]), features)
    max_nodes = shape.top_k + (shape.depth - 1) * shape.top_k**2
    assert len(tree) == min(shape.total_tokens, max_nodes)
    depths = tree.depths()
    assert int(depths.max()) <= shape.depth
    for i, p in enumerate(tree.parents.tolist()):
        if p >= 0:  # a path's cumulative log-prob never increases
            assert tree.scores[i] <= tree.scores[p] + 1e-6
    siblings = {}
    for i, p in enumerate(tree.parents.tolist()):
        siblings.setdefault(p, []).append(int(tree.tokens[i]))
    assert all(len(set(v)) == len(v) for v in siblings.values())  # top-k children are distinct tokens
    assert (tree.entropies >= 0).all()
    # a second call after "accepting" one more pair reuses the cache and stays well-formed
    tree2 = proposer.propose(torch.tensor([7, 11]), features[-1:])
    assert len(tree2) == len(tree) and proposer.trees.pairs == 6


def test_drafted_nodes_attend_to_their_ancestors_only(tiny_target, monkeypatch):
    """The drafter's hidden state for a path must not depend on sibling branches drafted beside it.
    Drafting kernels are exact here: INT8 (float32 drafters on CPUs without native bf16) quantizes
    each call's activations with one scale across its rows, so siblings would shift scores a little
    through the quantization, not through attention (which is what this test is about)."""
    monkeypatch.setattr("taps.models.drafter.drafting_kernel", lambda dtype: None)  # plain F.linear
    drafter = random_drafter(tiny_target, seed=4)
    ctx = torch.tensor([0, 4, 9, 13, 2])
    features = tiny_target(ctx, tiny_target.new_cache())
    wide = DrafterProposer(drafter, TreeShape(top_k=4, depth=3, total_tokens=60))
    narrow = DrafterProposer(drafter, TreeShape(top_k=1, depth=3, total_tokens=60))
    nxt = torch.cat([ctx[1:], torch.tensor([7])])
    t_wide, t_narrow = wide.propose(nxt, features), narrow.propose(nxt, features)
    # the greedy chain of the narrow tree appears in the wide tree with the same scores
    for i in range(len(t_narrow)):
        match = [
            (j, float(t_wide.scores[j]))
            for j in range(len(t_wide))
            if t_wide.tokens[j] == t_narrow.tokens[i] and int(t_wide.depths()[j]) == i + 1
        ]
        assert any(abs(s - float(t_narrow.scores[i])) < 1e-4 for _, s in match)


def test_paths_carry_their_confidences_into_cumulative_scores():
    tree = DraftTree.from_paths([[1, 2], [1, 3]], confidences=[[0.5, 0.5], [0.9, 0.1]])
    assert tree.tokens.tolist() == [1, 2, 3] and tree.parents.tolist() == [-1, 0, 0]
    # the shared node keeps the first path's confidence; children add theirs to it
    assert tree.scores.exp().tolist() == pytest.approx([0.5, 0.25, 0.05])
    assert (DraftTree.from_paths([[4, 5]]).scores == 0).all()
