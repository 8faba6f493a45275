"""Combination strategies: trie merge, routing, and losslessness for N >= 2 drafters."""

import math

import numpy as np
import pytest
import torch

from taps.models.target import TargetModel
from taps.spec.combine import (
    Committee,
    MergedProposer,
    RoutedProposer,
    greedy_match,
    merge_trees,
    tree_confidence,
    tree_entropy,
)
from taps.spec.generate import GenerationConfig, SpeculativeGenerator
from taps.spec.propose import DrafterProposer, Proposer, TreeShape
from taps.spec.tree import DraftTree
from tests.conftest import random_drafter
from tests.spec.test_lossless import PROMPTS, OracleProposer, greedy
from tests.spec.test_sampling import _chi2_ok


def _tree(paths, scores, source):
    t = DraftTree.from_paths(paths, source)
    t.scores = torch.tensor(scores, dtype=torch.float)
    t.entropies = -t.scores
    return t


def test_merge_shares_prefixes_and_keeps_attribution():
    a = _tree([[5, 6, 7], [9]], [-0.1, -0.5, -1.0, -2.0], source=0)
    b = _tree([[5, 6, 8], [5, 2]], [-0.3, -0.4, -0.9, -1.5], source=1)
    m = merge_trees([a, b])
    assert m.tokens.tolist() == [5, 6, 7, 9, 8, 2]
    assert m.parents.tolist() == [-1, 0, 1, -1, 1, 0]
    assert m.sources.tolist() == [0b11, 0b11, 0b01, 0b01, 0b10, 0b10]
    assert m.scores.tolist() == pytest.approx([-0.1, -0.4, -1.0, -2.0, -0.9, -1.5])
    _, positions, mask = m.verification_inputs(root=1, base=10)
    assert positions.tolist() == [10, 11, 12, 13, 11, 13, 12]
    assert mask[5].tolist() == [True, True, True, False, False, True, False]  # node 4 (token 8) sees 5, 6
    cut = merge_trees([a, b], budget=4)
    assert cut.tokens.tolist() == [5, 6, 7, 8]  # best four scores, ancestors first
    assert cut.parents.tolist() == [-1, 0, 1, 1]


def test_greedy_match_follows_the_longest_matching_path():
    tree = DraftTree.from_paths([[5, 7, 2], [9], [5, 8]])
    assert greedy_match(tree, [5, 7, 2, 4]) == 3
    assert greedy_match(tree, [5, 8, 1]) == 2
    assert greedy_match(tree, [9, 9]) == 1
    assert greedy_match(tree, [4, 5]) == 0
    assert greedy_match(DraftTree.empty(), [5]) == 0


def test_router_picks_by_signal():
    confident = _tree([[1, 2]], [-0.1, -0.2], 0)
    unsure = _tree([[3, 4]], [-2.0, -3.0], 1)
    assert tree_confidence(confident) > tree_confidence(unsure)
    assert tree_entropy(confident) < tree_entropy(unsure)
    assert tree_confidence(DraftTree.empty()) == 0 and tree_entropy(DraftTree.empty()) == float("inf")


class _Scripted(Proposer):
    """Hands out the given trees, one a step."""

    def __init__(self, trees):
        self.trees, self.step = trees, 0

    def propose(self, tokens, features):
        self.step += 1
        return self.trees[self.step - 1]


def _confident(p: float) -> DraftTree:
    return _tree([[1]], [float(np.log(p))], 0)


def test_router_smooths_its_signal_over_a_generation():
    # member 0 is far ahead at step 1, member 1 a little ahead from step 2 on
    script = [[_confident(0.9)] + [_confident(0.6)] * 9, [_confident(0.5)] + [_confident(0.7)] * 9]

    def choices(smoothing):
        router = RoutedProposer([_Scripted(t) for t in script], "confidence", smoothing=smoothing)
        for _ in range(10):
            router.propose(torch.zeros(1, dtype=torch.long), torch.zeros(1, 4))
        return router.choices

    assert choices(0.0) == [0] + [1] * 9  # step by step
    smoothed = choices(0.8)  # 0.9 vs 0.5 decays by 0.8 a step toward 0.6 vs 0.7
    assert smoothed[:2] == [0, 0] and smoothed[-1] == 1
    with pytest.raises(ValueError, match="smoothing"):
        RoutedProposer([_Scripted([]), _Scripted([])], smoothing=1.0)


def test_router_smoothing_restarts_with_each_generation_and_skips_empty_trees():
    sure, empty = _tree([[1]], [-0.1], 0), DraftTree.empty()
    unsure = _tree([[2]], [-1.0], 0)
    router = RoutedProposer(
        [_Scripted([sure, empty, unsure]), _Scripted([unsure, unsure, sure])], "entropy", smoothing=0.8
    )
    step = lambda: router.propose(torch.zeros(1, dtype=torch.long), torch.zeros(1, 4))  # noqa: E731
    step()
    step()  # member 0's empty tree (inf entropy) is not chosen and leaves its average alone
    assert router.choices == [0, 1] and math.isfinite(router._smoothed[0])
    router.reset()
    step()  # a new generation starts from this step's signal alone
    assert router.choices == [1]


def _members(target, n, shape, oracle_ref=None, seed=0):
    members = [
        DrafterProposer(
            random_drafter(target, seed=seed + i, draft_vocab=None if i % 2 else 50), shape, source=i
        )
        for i in range(n)
    ]
    if oracle_ref is not None:
        members[-1] = OracleProposer(oracle_ref, 96, seed, source=n - 1)
    return members


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize(
    "make",
    [
        lambda m: RoutedProposer(m, "confidence"),
        lambda m: RoutedProposer(m, "entropy"),
        lambda m: MergedProposer(m),
        lambda m: MergedProposer(m, budget=12),
    ],
)
def test_strategies_are_lossless(tiny_target, n, make):
    for i, prompt in enumerate(PROMPTS):
        ref = greedy(tiny_target, prompt)
        shape = TreeShape(*[(2, 3, 6), (4, 4, 16)][i % 2])
        gen = SpeculativeGenerator(
            tiny_target, make(_members(tiny_target, n, shape, list(prompt) + ref, seed=i))
        )
        out = gen.generate(prompt, GenerationConfig(max_new_tokens=40))
        assert out.tokens == ref


def test_merged_attributes_accepted_tokens(tiny_target):
    prompt = PROMPTS[0]
    ref = greedy(tiny_target, prompt, 40)
    members = _members(tiny_target, 2, TreeShape(3, 3, 8), list(prompt) + ref)
    out = SpeculativeGenerator(tiny_target, MergedProposer(members)).generate(
        prompt, GenerationConfig(max_new_tokens=40)
    )
    accepted = [s for step in out.steps for s in step.accepted_sources]
    # the oracle (member 1) drafted every accepted node
    assert accepted and all(s & 0b10 for s in accepted if s)
    assert max(s.tree_size for s in out.steps) > 8  # the merged tree holds both members' nodes


@pytest.mark.parametrize("strategy", ["route", "merged"])
def test_combined_sampling_follows_the_target(tiny_dirs, strategy):
    """Two members drafting identical trees (every path duplicated) must not bias sampling."""
    target = TargetModel.from_dir(tiny_dirs["llama"], dtype=torch.float32)
    prompt = [0, 3, 7]
    p1 = torch.softmax(target.logits(target(torch.tensor(prompt), target.new_cache()))[-1], -1)
    p2 = sum(
        p1[a] * torch.softmax(target.logits(target(torch.tensor(prompt + [a]), target.new_cache()))[-1], -1)
        for a in range(96)
    )
    shape = TreeShape(3, 2, 6)
    members = [DrafterProposer(random_drafter(target, seed=7), shape, source=i) for i in range(2)]
    combo = RoutedProposer(members, "confidence") if strategy == "route" else MergedProposer(members)
    gen = SpeculativeGenerator(target, combo)
    counts = np.zeros(96)
    for seed in range(2000):
        counts[
            gen.generate(prompt, GenerationConfig(max_new_tokens=2, temperature=1.0, seed=seed)).tokens[1]
        ] += 1
    assert _chi2_ok(counts, p2.numpy())


@pytest.mark.parametrize("vocab, vocabulary", [(None, "trained"), (40, "trained"), (40, "context")])
def test_stacked_drafters_draft_the_trees_they_draft_alone(tiny_target, vocab, vocabulary):
    """Batching N same-shape drafters into one forward per level must not change any member's tree;
    with a context vocabulary, nor does sharing the added tokens (each member's own draft vocabularies
    differ here: a token one member has, another gets added)."""
    shape = TreeShape(3, 4, 10, vocabulary=vocabulary)
    members = [
        DrafterProposer(random_drafter(tiny_target, seed=s, draft_vocab=vocab), shape, source=i)
        for i, s in enumerate([1, 2, 3])
    ]
    committee = Committee(members)
    assert len(committee.groups) == 1  # all three stacked
    prompt = torch.tensor(PROMPTS[1])
    cache = tiny_target.new_cache()
    features = tiny_target(prompt, cache)
    for proposer in members:
        proposer.reset()
    committee.reset()
    for step in range(3):  # grow the context as the loop would: one accepted token per step
        tokens = torch.cat([prompt, torch.tensor([5 + step] * step, dtype=torch.long)])
        new_features = features if step == 0 else features[-1:]
        together = committee.propose(tokens, new_features)
        for proposer, tree in zip(members, together):
            alone = proposer.propose(tokens, new_features)
            assert (
                tree.tokens.tolist() == alone.tokens.tolist()
                and tree.parents.tolist() == alone.parents.tolist()
            )
            assert torch.allclose(tree.scores, alone.scores, atol=1e-5)
            assert tree.sources.tolist() == alone.sources.tolist()


def test_members_of_different_shapes_draft_apart(tiny_target):
    members = [
        DrafterProposer(random_drafter(tiny_target, seed=1, draft_vocab=v), TreeShape(3, 3, 8), source=i)
        for i, v in enumerate([None, 50, 50])
    ]
    assert [index for index, _ in Committee(members).groups] == [[0], [1, 2]]
    assert len(Committee(members, batched=False).groups) == 3


@pytest.mark.parametrize(
    "make",
    [
        lambda m: RoutedProposer(m, "confidence"),
        lambda m: RoutedProposer(m, "entropy"),
        lambda m: MergedProposer(m),
        lambda m: MergedProposer(m, budget=10),
    ],
)
@pytest.mark.parametrize("vocabulary", ["trained", "context"])
def test_stacked_members_are_lossless(tiny_target, make, vocabulary):
    """Members that stack (same shape and draft vocabulary) draft in one batched forward per level."""
    shape = TreeShape(4, 4, 12, vocabulary=vocabulary)
    for i, prompt in enumerate(PROMPTS):
        members = [
            DrafterProposer(random_drafter(tiny_target, seed=10 * i + j, draft_vocab=60), shape, source=j)
            for j in range(3)
        ]
        combo = make(members)
        assert len(combo.committee.groups) == 1
        out = SpeculativeGenerator(tiny_target, combo).generate(prompt, GenerationConfig(max_new_tokens=40))
        assert out.tokens == greedy(tiny_target, prompt)
