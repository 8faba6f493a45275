"""The hardware-aware tree budget: measured costs, node choice, pauses, and losslessness under it."""

import itertools
import json

import numpy as np
import pytest
import torch

from taps.spec import costs
from taps.spec.budget import (
    MIN_PAUSE,
    PROBE_STEPS,
    SAFETY_MARGIN,
    AcceptanceModel,
    BudgetedProposer,
    CostScales,
    TreeBudget,
    _best_count,
    _leading_count,
)
from taps.spec.costs import CostCurve, load_or_measure, non_decreasing
from taps.spec.generate import GenerationConfig, SpeculativeGenerator
from taps.spec.ngram import NgramProposer
from taps.spec.propose import DrafterProposer, TreeDrafter, TreeShape
from taps.spec.tree import DraftTree
from tests.conftest import random_drafter
from tests.spec.test_lossless import PROMPTS, greedy

FLAT = CostCurve((1, 64), (10.0, 10.0))  # a GPU-like curve: every tree costs one forward
STEEP = CostCurve((1, 2, 64), (10.0, 1e4, 1e6))  # one extra token costs 1000 plain steps, whatever the speed


def test_non_decreasing_fit_pools_violators():
    assert non_decreasing([1, 3, 2, 4]) == [1, 2.5, 2.5, 4]
    assert non_decreasing([5, 1, 1, 1]) == [2, 2, 2, 2]
    assert non_decreasing([1, 2, 3]) == [1, 2, 3]


def test_curve_interpolates_and_extrapolates():
    curve = CostCurve((1, 3, 5), (10.0, 20.0, 40.0))
    assert [curve(n) for n in (1, 2, 3, 4, 5, 10)] == [10, 15, 20, 30, 40, 80]
    assert curve.table()[1:4] == [10, 15, 20]


def test_curve_is_measured_once_then_cached_until_stale(tiny_target, tmp_path, monkeypatch):
    calls = []
    real = costs.measure_curve
    monkeypatch.setattr(
        costs, "measure_curve", lambda model: calls.append(1) or real(model, sizes=(1, 2, 4), rounds=1)
    )
    first = load_or_measure(tiny_target, tmp_path, log=lambda _: None)
    assert load_or_measure(tiny_target, tmp_path, log=lambda _: None) == first and len(calls) == 1
    assert first.sizes == (1, 2, 4) and list(first.ms) == sorted(first.ms)
    (saved,) = tmp_path.glob("*.json")
    stale = json.loads(saved.read_text()) | {"measured_at": 0}
    saved.write_text(json.dumps(stale))
    load_or_measure(tiny_target, tmp_path, log=lambda _: None)
    assert len(calls) == 2
    saved.write_text("{not json")
    load_or_measure(tiny_target, tmp_path, log=lambda _: None)
    assert len(calls) == 3


def test_the_row_floor_is_the_cheapest_small_forward_where_it_clearly_pays():
    """On a Zen 4 EPYC in float32 a 4-token forward cost 39.4 ms against 48.1 for 1 token and 55.4
    for 2: small forwards run their matmuls on 4 rows there, and the budget's curve prices 1-3 tokens
    as 4; where 1 token is cheapest, or the gain is within noise, nothing is padded."""
    zen4 = CostCurve((1, 2, 3, 4, 5, 6, 8, 10), (48.1,) * 8, (48.1, 55.4, 42.5, 39.4, 40.6, 41.3, 51.6, 55.7))
    assert costs.row_floor(zen4) == 4
    floored = zen4.with_floor(4)
    assert floored.measured[:4] == (39.4,) * 4 and floored.measured[4:] == zen4.measured[4:]
    assert list(floored.ms) == sorted(floored.ms) and floored(1) < 40.6
    rising = CostCurve((1, 2, 4, 8), (10.0, 12.0, 15.0, 22.0), (10.0, 12.0, 15.0, 22.0))
    assert costs.row_floor(rising) == 1 and rising.with_floor(1) is rising
    within_noise = CostCurve((1, 2, 4), (10.0, 10.0, 10.0), (10.0, 10.2, 9.7))
    assert costs.row_floor(within_noise) == 1
    assert costs.row_floor(CostCurve((1, 16), (10.0, 5.0), (10.0, 5.0))) == 1  # only sizes up to 8


def test_the_curve_is_measured_without_the_row_floor_and_returned_with_it(tiny_dirs, tmp_path, monkeypatch):
    from taps.models.packed import ONEDNN
    from taps.models.target import TargetModel

    if not ONEDNN.available:
        pytest.skip("this torch build has no onednn kernel")
    model = TargetModel.from_dir(tiny_dirs["llama"], dtype=torch.float32).pack_for_cpu()
    model.set_row_floor(4)
    floors = []
    raw = (10.0, 12.0, 8.0, 7.0)
    fake = CostCurve((1, 2, 3, 4), tuple(non_decreasing(list(raw))), raw)
    monkeypatch.setattr(costs, "measure_curve", lambda m: floors.append(m.row_floor) or fake)
    curve = load_or_measure(model, tmp_path, log=lambda _: None)
    assert floors == [1] and model.row_floor == 4  # measured unpadded, the floor put back
    assert curve == fake.with_floor(4) and curve(1) == 7.0
    assert load_or_measure(model, tmp_path, log=lambda _: None) == curve and floors == [1]  # cached
    model.set_row_floor(1)
    assert load_or_measure(model, tmp_path, log=lambda _: None) == fake


def _tree() -> DraftTree:
    # root children 0 (conf .9) and 1 (.3); node 2 (.8) under node 0; node 3 (.05) under node 2
    scores = torch.tensor([0.9, 0.3, 0.8, 0.05]).log()
    return DraftTree(
        torch.tensor([5, 6, 7, 8]),
        torch.tensor([-1, -1, 0, 2]),
        scores,
        torch.zeros(4),
        torch.ones(4, dtype=torch.long),
    )


def _one_node(confidence: float) -> DraftTree:
    return DraftTree(
        torch.tensor([5]), torch.tensor([-1]), torch.tensor([confidence]).log(), torch.zeros(1), torch.ones(1)
    )


def test_flat_costs_verify_every_node_and_steep_costs_none():
    assert len(TreeBudget(FLAT).choose(_tree())) == 4
    assert len(TreeBudget(STEEP).choose(_tree())) == 0


def test_chosen_nodes_are_the_likeliest_and_closed_under_parents():
    # each node costs 1 ms: worth it above p = rate x 1 ms = 0.1
    curve = CostCurve((1, 64), (10.0, 10.0 + 63 * 1.0))
    chosen = TreeBudget(curve).choose(_tree())
    assert chosen.tokens.tolist() == [5, 6, 7]  # p .9, .3, .8 kept; .05 dropped
    assert chosen.parents.tolist() == [-1, -1, 0]


def _draft_steps(budget: TreeBudget, tree: DraftTree, steps: int, accepted: bool = False, **ms) -> None:
    """`steps` drafting steps offering `tree`: its chosen nodes all rejected (or the first accepted)."""
    for _ in range(steps):
        assert budget.should_draft()
        size = len(budget.choose(tree))
        verdicts = [accepted and i == 0 for i in range(size)]
        budget.observe(sum(verdicts), size, node_accepted=verdicts, **ms)


def test_losing_drafts_pause_then_probe_with_doubling_pauses():
    """Drafting is judged over PROBE_STEPS steps at a time: the run's first ones, then each probe."""
    budget = TreeBudget(CostCurve((1, 64), (10.0, 10.0 + 63 * 100.0)))
    _draft_steps(budget, _tree(), PROBE_STEPS - 1, draft_ms=50.0, verify_ms=10.0)
    assert budget.pause == 0  # one losing step, or three, do not pause drafting yet
    _draft_steps(budget, _tree(), 1, draft_ms=50.0, verify_ms=10.0)  # drafting cost 50 ms for nothing
    assert [budget.should_draft() for _ in range(MIN_PAUSE + 1)] == [False] * MIN_PAUSE + [True]
    budget.choose(_tree())
    budget.observe(0, 1, draft_ms=50.0, verify_ms=10.0, node_accepted=[False])
    _draft_steps(budget, _tree(), PROBE_STEPS - 1, draft_ms=50.0, verify_ms=10.0)
    assert [budget.should_draft() for _ in range(2 * MIN_PAUSE + 1)] == [False] * 2 * MIN_PAUSE + [True]


def test_a_probe_is_judged_on_all_its_steps():
    """One probe step at a hard position (its best node worth little) must not pause drafting that
    pays on the others: the steps of a probe are judged together. Drafting that loses on most of them
    pauses again, for twice as long."""
    curve = CostCurve((1, 64), (10.0, 10.0 + 63 * 1.0))  # a node costs 1 ms, a tenth of a plain step
    for probe, pauses in (([0.02, 0.95, 0.95, 0.95], False), ([0.02, 0.02, 0.95, 0.02], True)):
        budget = TreeBudget(curve)
        _draft_steps(budget, _one_node(0.02), PROBE_STEPS, draft_ms=5.0, verify_ms=11.0)  # lost: a pause
        for _ in range(MIN_PAUSE):
            assert not budget.should_draft()
            budget.observe(0, 0, draft_ms=0.0, verify_ms=10.0, node_accepted=[])
        for confidence in probe:
            assert budget.pause == 0  # nothing is judged before the probe's last step
            _draft_steps(budget, _one_node(confidence), 1, confidence > 0.5, draft_ms=2.0, verify_ms=11.0)
        assert (budget.pause == 2 * MIN_PAUSE) is pauses


def test_a_losing_probe_loses_even_after_slow_plain_steps():
    """Both sides are priced on the curve: a slow spell during the pause (plain steps measured at 10x
    their cost) must not make a probe that cannot pay look faster than plain decoding."""
    budget = TreeBudget(CostCurve((1, 64), (10.0, 10.0 + 63 * 100.0)))
    _draft_steps(budget, _tree(), PROBE_STEPS, draft_ms=50.0, verify_ms=10.0)  # lost: a pause of MIN_PAUSE
    for _ in range(MIN_PAUSE):
        assert not budget.should_draft()
        budget.observe(0, 0, draft_ms=0.0, verify_ms=100.0, node_accepted=[])
    for _ in range(PROBE_STEPS):  # the probe drafts and verifies its best node only, which does not pay
        assert budget.should_draft()
        assert len(budget.choose(_one_node(0.02))) == 1
        budget.observe(0, 1, draft_ms=2.0, verify_ms=10.0, node_accepted=[False])
    assert [budget.should_draft() for _ in range(2 * MIN_PAUSE + 1)] == [False] * 2 * MIN_PAUSE + [True]


def test_a_probe_verifies_its_best_node_even_where_none_pays():
    """Otherwise a budget whose estimates sank below paying would verify nothing, learn nothing, and
    stay paused whatever the text; steps that are not probes still verify only what pays."""
    budget = TreeBudget(STEEP)
    for _ in range(PROBE_STEPS):  # the run's first steps: judged together, but not a probe after a pause
        assert budget.should_draft()
        assert len(budget.choose(_tree())) == 0
        budget.observe(0, 0, draft_ms=50.0, verify_ms=10.0, node_accepted=[])
    assert [budget.should_draft() for _ in range(MIN_PAUSE + 1)] == [False] * MIN_PAUSE + [True]
    probe = budget.choose(_tree())
    assert probe.tokens.tolist() == [5] and probe.parents.tolist() == [-1]
    budget.observe(1, 1, draft_ms=50.0, verify_ms=10.0, node_accepted=[True])
    assert budget.acceptance.seen.sum() == 1 and budget.acceptance.hits.sum() == 1


def test_a_non_finite_draft_score_is_priced_as_never_accepted():
    """One CUDA run drafted NaN scores (captured expansion, random tiny drafter); a NaN in the running
    calibration made every later step fail. The node is priced at p = 0 and the means stay finite."""
    budget = TreeBudget(FLAT)
    budget.should_draft()
    tree = _tree()
    tree.scores[1] = float("nan")
    chosen = budget.choose(tree)
    assert 6 not in chosen.tokens.tolist() and len(chosen)
    budget.observe(
        1, len(chosen), draft_ms=1.0, verify_ms=10.0, node_accepted=[True] + [False] * (len(chosen) - 1)
    )
    assert budget.calibration.value is not None and 0 < budget.calibration_factor


def test_taking_in_committed_features_counts_as_drafting_except_after_a_pause():
    """Each step a drafter first takes in the tokens the last step committed: a cost of drafting, which
    tips drafting that barely pays into a pause. The first step of a sequence takes in the whole prompt
    instead, and is charged only the usual per-step share."""
    budget = TreeBudget(FLAT)  # plain steps: 1 token in 10 ms; a sure node: 2 tokens in 10 ms + drafting
    sure = _one_node(0.99)

    def step(draft_ms: float, ingest_ms: float) -> None:
        assert budget.should_draft()
        budget.choose(sure)
        budget.ingested(ingest_ms)
        budget.observe(1, 1, draft_ms=draft_ms, verify_ms=10.0, node_accepted=[True])

    budget.new_sequence()
    step(draft_ms=508.0, ingest_ms=500.0)  # the prompt: charged 8 ms of drafting, 2 / 18 > 1.05 / 10
    assert budget.speculative.value > (1 + SAFETY_MARGIN) * budget.plain_rate()
    for _ in range(40):  # steady steps: 8 ms drafting + 2 ms taking in, 2 tokens in 20 ms: no gain
        step(draft_ms=10.0, ingest_ms=2.0)
        if budget.pause:
            break
    assert budget.pause > 0


@pytest.mark.parametrize("confidence, pauses", [(SAFETY_MARGIN / 2, True), (4 * SAFETY_MARGIN, False)])
def test_drafting_that_barely_pays_steps_aside(confidence, pauses):
    """On a flat curve with drafting at a tenth of a plain step, one node of acceptance p makes a
    step worth (1 + p) / 1.1 plain steps: below 1 + SAFETY_MARGIN the budget pauses, above it drafting
    goes on."""
    budget = TreeBudget(FLAT)
    budget.acceptance.update = budget.calibration.add = lambda *args: None  # p stays the confidence
    for _ in range(PROBE_STEPS):
        assert budget.should_draft()
        assert len(budget.choose(_one_node(confidence))) == 1
        budget.observe(0, 1, draft_ms=1.0, verify_ms=10.0, node_accepted=[False])
    assert budget.should_draft() is not pauses


def test_drafting_that_costs_next_to_nothing_never_pauses():
    """Prompt lookup finds no match for many steps in a row: each such step loses only its drafting
    time, so pausing would save nothing and miss the next match. Costly drafting that loses pauses."""
    cheap, dear = TreeBudget(FLAT), TreeBudget(FLAT)
    for _ in range(30):
        for budget, draft_ms in ((cheap, 0.1), (dear, 2.0)):
            if budget.should_draft():
                budget.choose(DraftTree.empty())
                budget.observe(0, 0, draft_ms=draft_ms, verify_ms=10.0, node_accepted=[])
    assert cheap.drafting and cheap.pause == 0
    assert dear.pause > 0 or not dear.drafting


def test_prompt_lookup_scores_longer_matches_higher():
    """Its confidences keep a 3-token match apart from a 1-token one in the budget's bins."""
    ngram = NgramProposer(max_ngram=3, length=2, branches=2)
    long_match = ngram.propose(torch.tensor([7, 8, 9, 4, 5, 1, 7, 8, 9]), None)
    short_match = ngram.propose(torch.tensor([7, 4, 5, 1, 2, 3, 7]), None)
    assert long_match.tokens.tolist() == [4, 5] and short_match.tokens.tolist() == [4, 5]
    assert (long_match.scores > short_match.scores).all()
    assert (long_match.scores.diff() < 0).all()  # deeper copied tokens are less certain
    two = NgramProposer(max_ngram=1, length=1).propose(torch.tensor([3, 4, 3, 5, 3]), None)
    assert two.tokens.tolist() == [5, 4] and two.scores[0] > two.scores[1]  # the latest match first


def test_acceptance_is_learned_from_verdicts():
    budget = TreeBudget(FLAT)
    tree = budget.choose(_tree())
    before = budget.acceptance.predict(tree.scores.exp(), torch.tensor([1, 1, 2, 3]))
    for _ in range(20):
        budget.choose(_tree())
        budget.observe(0, 4, 1.0, 10.0, [False, False, False, False])
    after = budget.acceptance.predict(tree.scores.exp(), torch.tensor([1, 1, 2, 3]))
    assert (after < before / 5).all()


def test_acceptance_follows_a_change_of_text():
    """After 300 steps where a bin's nodes were accepted, 200 where they were not: bins that counted
    every verdict alike would still predict ~0.6; forgetting the old ones brings it under 0.35."""
    model = AcceptanceModel()
    confidence, depth = torch.tensor([0.5]), torch.tensor([1])
    for accepted in [True] * 300 + [False] * 200:
        model.update(confidence, depth, torch.tensor([accepted]))
    assert float(model.predict(confidence, depth)) < 0.35


def test_costs_follow_the_run_where_the_cached_curve_is_off():
    """A curve measured under load can be flat where the run's own verifications are steep: the
    budget prices trees by what this run's steps took, per size range, and keeps them non-decreasing."""
    curve = CostCurve((1, 64), (100.0, 100.0 + 63 * 2.0))  # cached: each token adds 2% of a step
    costs = CostScales(torch.tensor(curve.table(), dtype=torch.float64))
    costs.observe(8, 90.0)  # one tree step, then a pause of plain steps: the tree's price holds
    for _ in range(30):
        costs.observe(1, 60.0)
    assert costs.priced[8] == pytest.approx(90.0, rel=0.01)
    for _ in range(60):  # this run: a plain step takes 60 ms, an 8-token tree 90 ms (1.5x, not 1.14x)
        costs.observe(1, 60.0)
        costs.observe(8, 90.0)
    assert costs.priced[1] == pytest.approx(60.0, rel=0.01) and costs.priced[8] == pytest.approx(
        90.0, rel=0.01
    )
    assert costs.priced[64] > costs.priced[8]  # past the last measured size: the curve's shape, scaled
    assert (costs.priced[2:] >= costs.priced[1:-1]).all()
    budget = TreeBudget(curve)
    budget.costs = costs
    budget.overall.add(1.0, 60.0)  # generating at the plain rate
    assert len(budget.choose(_tree())) < len(TreeBudget(curve).choose(_tree()))


def test_calibration_tempers_optimistic_estimates_and_pauses_drafting():
    """When fewer drafted tokens are accepted than the bins expect (the text changed domain), p is
    scaled down (to at most half) and a drafter that now loses steps aside."""
    curve = CostCurve((1, 64), (10.0, 10.0 + 63 * 1.0))
    budget = TreeBudget(curve)
    budget.acceptance.hits.fill_(5e5)  # bins sure of p = 0.5, as if learned on other text: drafting
    budget.acceptance.seen.fill_(1e6)  # 4 nodes for 5 ms + 12 ms would then pay (3 tokens, 0.6 plain steps)
    p_before = budget.acceptance_p(torch.tensor([0.9]), torch.tensor([1]))
    for _ in range(30):  # each step verifies nodes the bins call certain; none is accepted
        size = len(budget.choose(_tree()))
        budget.observe(0, size, draft_ms=5.0, verify_ms=12.0, node_accepted=[False] * size)
    assert budget.calibration.value < 0.5
    assert budget.acceptance_p(torch.tensor([0.9]), torch.tensor([1])) == pytest.approx(
        p_before / 2, rel=1e-3
    )
    assert budget.pause > 0  # at p = 0.25: 2 tokens in 17 ms, below a plain step's 1 in 8.6 ms


def _freeze_costs(budget: TreeBudget) -> None:
    """Keep the given curve: the tiny target's timings are nothing like it."""
    budget.costs.observe = lambda tokens, ms: None


class _Scripted(TreeBudget):
    """Drafts on a fixed pattern of steps, so plain and speculative steps interleave."""

    def __init__(self, curve, pattern):
        super().__init__(curve)
        self.pattern = itertools.cycle(pattern)
        _freeze_costs(self)

    def should_draft(self) -> bool:
        self.drafting = next(self.pattern)
        return self.drafting


@pytest.mark.parametrize("budget", ["flat", "steep", "interleaved", "measured"])
def test_budgeted_drafting_is_lossless(tiny_target, tmp_path, budget):
    curves = {"flat": FLAT, "steep": STEEP, "interleaved": FLAT}
    for i, prompt in enumerate(PROMPTS):
        if budget == "interleaved":
            tree_budget = _Scripted(FLAT, [True, False, False, True, True, False])
        elif budget == "measured":
            tree_budget = TreeBudget(load_or_measure(tiny_target, tmp_path, log=lambda _: None))
        else:
            tree_budget = TreeBudget(curves[budget])
            _freeze_costs(tree_budget)  # the tiny target's timings would correct the curve away
        inner = (
            DrafterProposer(random_drafter(tiny_target, seed=3), TreeShape(8, 6, 48))
            if i
            else NgramProposer()
        )
        out = SpeculativeGenerator(tiny_target, BudgetedProposer(inner, tree_budget)).generate(
            prompt, GenerationConfig(max_new_tokens=40)
        )
        assert out.tokens == greedy(tiny_target, prompt)
        sizes = [s.tree_size for s in out.steps]
        if budget == "interleaved":
            assert 0 in sizes and max(sizes) > 0
        if budget == "steep":  # nothing pays: only the probes after pauses verify, their best node
            assert max(sizes) <= 1 and sum(sizes) <= len(sizes) / 3


@pytest.mark.parametrize("curve", ["flat", "sloped"])
def test_a_flat_curve_drafts_the_whole_shape_in_one_piece(tiny_target, curve, monkeypatch):
    """Where a whole tree costs about one forward (a GPU), graphed drafting under the budget runs the
    whole expansion (one CUDA graph there; eagerly here) with no per-level decisions; where trees cost
    more, the budget decides level by level. Lossless both ways."""
    costs_of = {"flat": FLAT, "sloped": CostCurve((1, 64), (10.0, 10.0 + 63 * 0.5))}
    budget = TreeBudget(costs_of[curve])
    _freeze_costs(budget)
    assert budget.verifies_freely(48) == (curve == "flat")
    decisions = []
    frontier_width = TreeBudget.frontier_width
    monkeypatch.setattr(
        TreeBudget, "frontier_width", lambda *a, **k: decisions.append(1) or frontier_width(*a, **k)
    )
    inner = DrafterProposer(random_drafter(tiny_target, seed=3), TreeShape(8, 6, 48))
    inner._trees = TreeDrafter([inner.drafter], inner.shape, [0], graphs=True)
    proposer = BudgetedProposer(inner, budget)
    for prompt in PROMPTS[:2]:
        out = SpeculativeGenerator(tiny_target, proposer).generate(
            prompt, GenerationConfig(max_new_tokens=40)
        )
        assert out.tokens == greedy(tiny_target, prompt)
    assert inner.trees.whole == (curve == "flat")
    assert (len(decisions) > 0) == (curve == "sloped")


def test_frontier_expands_only_the_nodes_that_can_pay():
    scores, depth = torch.tensor([[0.9, 0.5, 0.01]]).log(), torch.tensor([[1, 1, 1]])
    budget = TreeBudget(FLAT)  # rate 0.1 token/ms; verifying is free
    assert budget.frontier_width(scores, depth, scores, level=1) == 3  # drafting cost not measured yet
    budget.level_timed(rows=1, ms=2.0)  # worth expanding while p > 0.1 x 2 ms
    assert budget.frontier_width(scores, depth, scores, level=1) == 2
    budget.level_timed(rows=1, ms=1000.0)
    budget.level_timed(rows=1, ms=1000.0)
    assert budget.frontier_width(scores, depth, scores, level=1) == 0
    assert TreeBudget(STEEP).frontier_width(scores, depth, scores, level=1) == 0


@pytest.mark.parametrize("drafts", ["top-k", "auto"])
def test_budgeted_sampling_follows_the_target_distribution(tmp_path, drafts):
    """`--drafts auto` drafts sampled chains under a budget that decides level by level."""
    from tests.spec.test_sampling import _chi2_ok, _sampling_target

    target, prompt, p2 = _sampling_target(tmp_path)
    shape = TreeShape(top_k=3, depth=3, total_tokens=8, drafts=drafts)
    inner = DrafterProposer(random_drafter(target, seed=2), shape)
    gen = SpeculativeGenerator(target, BudgetedProposer(inner, _Scripted(FLAT, [True, True, False])))
    counts, accepted = np.zeros(len(p2)), 0
    for seed in range(3000):
        out = gen.generate(prompt, GenerationConfig(max_new_tokens=3, temperature=1.0, seed=seed))
        counts[out.tokens[1]] += 1
        accepted += out.steps[0].accepted
    assert accepted > 200
    assert _chi2_ok(counts, p2.numpy())
    assert (inner.trees.sampling is not None) == (drafts == "auto")


def test_sampled_chains_are_kept_node_by_node_without_look_ahead():
    """Whether a sampled node is verified must not hang on its descendants (they depend on its drawn
    token), so the budget keeps a sampled tree's leading nodes that each pay for themselves."""
    price = torch.tensor([0.0, 0.0, 0.5, 0.6, 0.7], dtype=torch.float64)  # the first node dear, then cheap
    p = torch.tensor([0.4, 0.35, 0.3])
    assert _best_count(p, price) == 3  # looking ahead, the cheap later nodes pay for the first
    assert _leading_count(p, price) == 0  # node by node, the first does not pay for itself
    assert _leading_count(torch.tensor([0.6, 0.35, 0.05]), price) == 2


def test_a_pause_carries_over_to_the_next_generation():
    budget = TreeBudget(CostCurve((1, 64), (10.0, 10.0 + 63 * 100.0)))
    proposer = BudgetedProposer(NgramProposer(), budget)
    tokens = torch.tensor([1, 2, 3, 1, 2])
    for _ in range(PROBE_STEPS):
        proposer.propose(tokens, torch.zeros(5, 4))
        budget.observe(0, 0, draft_ms=50.0, verify_ms=10.0, node_accepted=[])  # drafting lost
    proposer.reset()
    assert len(proposer.propose(tokens, torch.zeros(5, 4))) == 0 and not budget.drafting


def test_auto_drafts_a_fixed_tree_only_on_a_gpu_whose_curve_is_flat():
    """On an H200 the fixed tree beat the budget in every cell; CPUs keep the budget, flat curve or not.
    The tree fills what verification prices flat: 63 nodes, else the default 24."""
    from taps.spec.budget import flat_tree_shape
    from taps.spec.propose import FLAT_SHAPE

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    flat_to_25 = CostCurve((1, 25, 64), (10.0, 12.0, 40.0))  # 24 nodes within 1.5x of one token, 63 not
    assert flat_tree_shape(FLAT, cuda) == FLAT_SHAPE and FLAT_SHAPE.total_tokens == 63
    assert flat_tree_shape(flat_to_25, cuda) == TreeShape()
    assert flat_tree_shape(STEEP, cuda) is None
    assert flat_tree_shape(FLAT, cpu) is None


def test_auto_on_a_flat_gpu_drafts_the_fixed_tree_and_merged_members_share_it(
    tiny_target, tmp_path, monkeypatch
):
    """Under the budget on a CPU; on a flat GPU the fixed FLAT_SHAPE tree with no budget, each merged
    member drafting its share of the nodes, so that the merged tree fits the flat-priced rows too."""
    import taps.spec.budget
    import taps.spec.costs
    from taps.drafters import make_strategy
    from taps.models.checkpoint import save_drafter
    from taps.spec.budget import BudgetedProposer
    from taps.spec.combine import MergedProposer, RoutedProposer
    from taps.spec.propose import AUTO_SHAPE, FLAT_SHAPE

    target = _Loaded(tiny_target)
    monkeypatch.setattr(taps.spec.costs, "load_or_measure", lambda model, **kw: FLAT)
    assert isinstance(make_strategy("single", ["ngram"], target, AUTO_SHAPE), BudgetedProposer)
    assert make_strategy("single", ["none"], target, AUTO_SHAPE) is None
    monkeypatch.setattr(taps.spec.budget, "flat_tree_shape", lambda curve, device: FLAT_SHAPE)  # a GPU
    assert isinstance(make_strategy("single", ["ngram"], target, AUTO_SHAPE), NgramProposer)
    names = []
    for seed in (0, 1):
        names.append(str(tmp_path / f"d{seed}"))
        save_drafter(random_drafter(tiny_target, seed=seed), names[-1], tiny_target.fingerprint())
    single = make_strategy("single", names[:1], target, AUTO_SHAPE)
    assert isinstance(single, DrafterProposer) and single.shape == FLAT_SHAPE
    routed = make_strategy("route:confidence", names, target, AUTO_SHAPE)
    assert isinstance(routed, RoutedProposer) and all(m.shape == FLAT_SHAPE for m in routed.members)
    merged = make_strategy("merged", names, target, AUTO_SHAPE)
    assert isinstance(merged, MergedProposer)
    assert [m.shape.total_tokens for m in merged.members] == [31, 31]
    prompt = torch.tensor(PROMPTS[0])
    tree = merged.propose(prompt, torch.zeros(len(prompt), tiny_target.shape.hidden_size))
    assert 0 < len(tree) <= FLAT_SHAPE.total_tokens


class _Loaded:
    def __init__(self, model):
        self.model, self.name = model, "tiny"


def test_greedy_and_sampled_generations_learn_apart():
    """What a T = 1 generation teaches the budget (bins, calibration, rate, a pause) does not steer the
    next T = 0 one, and comes back with the next T = 1 one; the machine's costs stay shared."""
    budget = TreeBudget(CostCurve((1, 64), (10.0, 10.0 + 63 * 100.0)))
    proposer = BudgetedProposer(NgramProposer(), budget)
    confidence, depth = torch.tensor([0.9, 0.9]), torch.tensor([1, 1])
    proposer.sample_drafts(1.0, torch.Generator())
    budget.acceptance.update(confidence, depth, torch.tensor([False, False]))
    for _ in range(PROBE_STEPS):
        budget.observe(0, 0, draft_ms=50.0, verify_ms=10.0, node_accepted=[])  # drafting lost
    sampled_p, costs = float(budget.acceptance.predict(confidence[:1], depth[:1])), budget.costs
    assert budget.pause > 0 and sampled_p < 0.9
    proposer.sample_drafts(0.0, torch.Generator())  # greedy: fresh bins, no pause, same costs
    assert budget.pause == 0 and budget.costs is costs
    assert float(budget.acceptance.predict(confidence[:1], depth[:1])) == pytest.approx(0.9)
    proposer.sample_drafts(0.7, torch.Generator())  # sampled again: what it learned is back
    assert budget.pause > 0 and float(budget.acceptance.predict(confidence[:1], depth[:1])) == sampled_p
