"""Prompt lookup merged into the learned drafters' tree (`--lookup`): when it joins, and that it stays
lossless greedily and in distribution."""

import numpy as np
import pytest
import torch

import taps.spec.costs
from taps.drafters import DEFAULT_DRAFTER, make_strategy, resolve_drafters, wants_lookup, with_lookup
from taps.errors import TapsError
from taps.models.checkpoint import save_drafter
from taps.spec.budget import BudgetedProposer
from taps.spec.combine import MergedProposer
from taps.spec.costs import CostCurve
from taps.spec.generate import GenerationConfig, SpeculativeGenerator
from taps.spec.ngram import NgramProposer
from taps.spec.propose import AUTO_SHAPE, Proposer, TreeShape
from taps.spec.tree import DraftTree
from tests.conftest import random_drafter
from tests.spec.test_budget import _Loaded
from tests.spec.test_lossless import PROMPTS, greedy
from tests.spec.test_sampling import _chi2_ok, _sampling_target

STEEP = CostCurve((1, 8, 64), (10.0, 14.0, 40.0))  # a CPU-like curve: trees cost more as they grow


@pytest.fixture
def drafter_dir(tiny_target, tmp_path):
    folder = tmp_path / "drafter"
    save_drafter(random_drafter(tiny_target, seed=3), folder, tiny_target.fingerprint())
    return str(folder)


def test_lookup_joins_learned_drafters_under_the_cpu_budget_only(tiny_target, drafter_dir):
    target = _Loaded(tiny_target)
    assert wants_lookup("auto", [drafter_dir], target, AUTO_SHAPE)
    assert not wants_lookup("auto", [drafter_dir], target, TreeShape())  # a fixed tree keeps its size
    assert wants_lookup("on", [drafter_dir], target, TreeShape())
    assert not wants_lookup("off", [drafter_dir], target, AUTO_SHAPE)
    assert not wants_lookup("on", ["ngram"], target, AUTO_SHAPE)  # already there
    assert not wants_lookup("on", [drafter_dir, "ngram"], target, AUTO_SHAPE)
    with pytest.raises(TapsError, match="--lookup"):
        wants_lookup("sometimes", [drafter_dir], target, AUTO_SHAPE)


def test_drafters_auto_is_the_shipped_default_or_prompt_lookup():
    assert resolve_drafters(["auto"], "smollm2-135m") == [DEFAULT_DRAFTER]
    assert resolve_drafters(["auto"], "no-such-target") == ["ngram"]  # nothing shipped: no training needed
    assert resolve_drafters(["eagle2-chat", "auto"], "smollm2-135m") == ["eagle2-chat", "auto"]


def test_make_strategy_merges_prompt_lookup_beside_the_drafters(tiny_target, drafter_dir, monkeypatch):
    monkeypatch.setattr(taps.spec.costs, "load_or_measure", lambda model, **kw: STEEP)
    target = _Loaded(tiny_target)
    budgeted = make_strategy("single", [drafter_dir], target, AUTO_SHAPE, lookup="auto")
    assert isinstance(budgeted, BudgetedProposer) and budgeted.name.endswith("+ngram")
    merged = budgeted.inner
    assert isinstance(merged, MergedProposer) and isinstance(merged.members[1], NgramProposer)
    assert merged.members[1].source == 1  # its nodes are told apart from the drafter's (source 0)
    pair = make_strategy("route:confidence", [drafter_dir, drafter_dir], target, AUTO_SHAPE, lookup="on")
    assert pair.inner.members[1].source == 2
    plain = make_strategy("single", [drafter_dir], target, AUTO_SHAPE, lookup="off")
    assert not isinstance(plain.inner, MergedProposer)


class _Wide(Proposer):
    """A 30-node chain: more nodes than a padded forward of 8 rows holds."""

    def propose(self, tokens, features):
        return DraftTree.from_paths([list(range(30))], 0, [[0.9] * 30])


def test_lookup_trees_fit_padded_rows():
    merged = with_lookup(_Wide(), source=1, rows=8)
    tree = merged.propose(torch.tensor([5, 6, 5, 6, 5]), None)  # the n-gram proposer matches too
    assert len(tree) == 7
    assert len(with_lookup(_Wide(), source=1, rows=0).propose(torch.tensor([5, 6, 5, 6, 5]), None)) > 30


@pytest.mark.parametrize("shape", [AUTO_SHAPE, TreeShape(4, 3, 10)], ids=["auto", "fixed"])
def test_drafter_with_lookup_is_lossless(tiny_target, drafter_dir, shape, monkeypatch):
    monkeypatch.setattr(taps.spec.costs, "load_or_measure", lambda model, **kw: STEEP)
    proposer = make_strategy("single", [drafter_dir], _Loaded(tiny_target), shape, lookup="on")
    gen = SpeculativeGenerator(tiny_target, proposer)
    lookup_accepted = 0
    for prompt in PROMPTS:
        out = gen.generate(prompt, GenerationConfig(max_new_tokens=40))
        assert out.tokens == greedy(tiny_target, prompt)
        lookup_accepted += sum(1 for step in out.steps for s in step.accepted_sources if s & 0b10)
    assert lookup_accepted > 0  # prompt lookup's nodes were verified and taken


def test_drafter_with_lookup_follows_the_target_distribution(tmp_path):
    """At T > 0 the merged tree is deterministic (top-k and copied tokens), verified by the residual
    rule; a prompt that repeats itself gives prompt lookup matches to draft."""
    target, prompt, p2 = _sampling_target(tmp_path / "target", prompt=(0, 3, 7, 3, 7, 3))
    folder = tmp_path / "drafter"
    save_drafter(random_drafter(target, seed=2), folder, target.fingerprint())
    shape = TreeShape(top_k=3, depth=3, total_tokens=8)
    proposer = make_strategy("single", [str(folder)], _Loaded(target), shape, lookup="on")
    gen = SpeculativeGenerator(target, proposer)
    counts, lookup_accepted = np.zeros(len(p2)), 0
    for seed in range(3000):
        out = gen.generate(prompt, GenerationConfig(max_new_tokens=2, temperature=1.0, seed=seed))
        counts[out.tokens[1]] += 1
        lookup_accepted += sum(1 for s in out.steps[0].accepted_sources if s & 0b10)
    assert lookup_accepted > 100
    assert _chi2_ok(counts, p2.numpy())
