"""Hardware-aware tree budget: each step, verify the draft nodes that pay for themselves, or none.

Verifying one more drafted node is worth it when the tokens it is expected to add exceed what its
extra verification time would have produced anyway. With r the generation's realised rate (tokens
per ms, drafting included), node i, accepted with probability p_i, is kept while p_i > r x (the
extra time of verifying it), which maximises long-run tokens per second (Dinkelbach's ratio rule).
Three measured quantities feed it:

- cost: the target's forward time for n tokens on this machine (`taps.spec.costs`), corrected
  online by what verification actually took in this run, per range of tree sizes (`CostScales`):
  the curve is measured once and cached, and measured under load its shape is off, not only its
  level (on the CI-class EPYC a curve taken beside another benchmark priced 6 tree tokens at 1.18x
  one token; the run's own steps cost 1.5x, so drafting that lost looked like a win);
- value: p_i, learned online from every verification per draft depth and confidence bin, with the
  drafter's own cumulative confidence exp(score) (what EAGLE-2 ranks nodes by) as the prior, times a
  calibration factor: drafted tokens accepted over those expected, in recent steps. The bins forget
  (FORGETTING per step, ~100 steps of memory), since when the text changes domain, bins that learned
  over the whole run lag: on the CI-class CPU (AMD EPYC family 25, `benchmarks/budget_trace.py`),
  hass-math moving from GSM8K to MT-Bench kept expecting ~1.45 tokens a step while emitting ~1.2,
  judged drafting 20% ahead of plain decoding, and ran at 0.75x on one prompt. At T = 1, over 8 GSM8K
  then 8 MT-Bench prompts, forgetting brought MT-Bench's expected drafting-step tokens from 5% over
  those emitted to 1.4%, with GSM8K's as close as before (0.0-0.5%);
- the rate r, over recent steps.

Two more decisions follow from the same numbers. A drafting level expands only the frontier nodes
whose descendants could still pay for their drafting row and their verification, and drafting stops
when none could. And when speculative steps are not expected to beat plain steps by SAFETY_MARGIN,
drafting pauses: those steps are plain decoding (no draft, a 1-token verification). A probe of
PROBE_STEPS drafting steps (each verifying at least its best node, so that it teaches something)
follows each pause, and is judged as a whole; the pause doubles while drafting keeps losing (up to
MAX_PAUSE steps), so a drafter that cannot win costs at most a probe every MAX_PAUSE steps. A run's
first drafting steps are judged the same way. One step is too little to judge by: a drafting step's
worth swings with the drafter's confidence at that one position, and a probe judged alone locked
drafting out at T = 1 (hass-mixed on the CI-class EPYC: after a hard stretch of MT-Bench text every
probe landed on a position whose best node was worth ~0.1 tokens, each doubled the pause, and the
drafter, 1.10-1.14x of plain decoding in a run where it never paused, decoded plain on 96% of its
steps, `benchmarks/budget_trace.py`). Drafting that costs next to nothing (prompt lookup on a CPU:
under MATERIAL_DRAFTING of a plain step) never pauses: a pause would save nothing, and the per-step
choice alone keeps it from verifying nodes that do not pay.

That judgement prices both sides on the same corrected curve: a speculative step costs its drafting
(measured) plus verifying its tree, a plain step one token. Comparing
measured speculative steps with measured plain steps instead compares two different stretches of
time, and on a shared machine a slow spell during a pause made a probe that verified nothing look
like a win (seen at T = 1). The margin covers what the acceptance estimates cannot know yet: right
after the text changes domain they run optimistic (`benchmarks/budget_trace.py`, with this module as
it was before the margin: 5-10% more expected than emitted tokens on MT-Bench prompts after GSM8K at
T = 1), and a drafter at break-even should step aside, not lose a little.
"""

from __future__ import annotations

import numpy as np
import torch

from taps.spec.costs import CostCurve
from taps.spec.propose import FLAT_SHAPE, Proposer, TreeShape
from taps.spec.tree import DraftTree

CONFIDENCE_EDGES = torch.tensor(
    [0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.97], dtype=torch.float64
)
MAX_DEPTH = 8  # deeper nodes share the last depth's statistics
PRIOR_WEIGHT = 2.0  # pseudo-observations behind the drafter's own confidence
SMOOTHING = 0.1  # weight of the newest step in the running means
FORGETTING = 0.99  # each verified step, the acceptance bins' counts shrink by this factor
# The calibration factor's limits. Low: a factor that shrank every p below paying would choose empty
# trees, which teach nothing, and never recover; at 0.5 a confident node (p ~0.9) still gets verified.
CALIBRATION_RANGE = (0.5, 2.0)
MIN_PAUSE, MAX_PAUSE = 4, 64  # plain steps after a losing speculative step
PROBE_STEPS = 4  # drafting steps judged together: a run's first ones, and each probe after a pause
SAFETY_MARGIN = 0.05  # drafting must be expected to beat plain decoding by this fraction to go on
MATERIAL_DRAFTING = 0.02  # drafting below this share of a plain step is never paused (it saves nothing)
# A whole tree priced within this factor of a one-token forward: verification is nearly free in tree size
# (an H200 replayed 1-64 tokens of the default target from CUDA graphs in 1.0-1.25x one token's time;
# the CPUs measured here paid 2.1x for 24 tokens, the bar that keeps per-level decisions on them).
FLAT_TREE = 1.5


def flat_tree_shape(curve: CostCurve, device: torch.device) -> TreeShape | None:
    """The fixed tree `--tree auto` drafts with no budget on a GPU whose curve prices it within
    FLAT_TREE of one token: FLAT_SHAPE (63 nodes) where that fits, else the default 8/5/24; None on
    CPUs and steeper curves, which keep the budget.

    Why no budget there: on an H200 (2026-12-04, bf16, 3 GSM8K + 3 MT-Bench prompts,
    `benchmarks/results/nvidia-h200-bfloat16.json`) the fixed 8/5/24 tree ran ahead of the budget in
    all 18 cells (9 proposers x 2 benchmarks; 1.24-1.61x of plain decoding against 1.04-1.51x), the
    budget paying for a deeper shape, a host round trip to choose nodes each step, and pauses where
    drafting still paid. Why 63 nodes: that GPU verified 64 tokens in 1.25x one token's time (and in
    bf16 every forward is padded to 64 rows anyway), while the same five drafting levels with 63 nodes
    kept raised tau ~8% (see FLAT_SHAPE). CPUs keep the budget: there verification grows with the
    tree (24 tokens cost 2.1x one on the CI-class EPYC), and it is what keeps drafting from losing."""
    if device.type != "cuda":
        return None
    fits = (s for s in (FLAT_SHAPE, TreeShape()) if curve(s.total_tokens + 1) <= FLAT_TREE * curve(1))
    return next(fits, None)


class AcceptanceModel:
    """P(the target accepts a drafted node | its depth, its confidence bin), learned from verdicts.

    A node counts as accepted when it lies on the accepted path, so p already includes its
    ancestors being accepted: the expected accepted length of a tree is the sum of its nodes' p.
    Older verdicts weigh less (FORGETTING), so that the bins follow the text as it changes."""

    def __init__(self) -> None:
        shape = (MAX_DEPTH, len(CONFIDENCE_EDGES) + 1)
        self.hits = torch.zeros(shape, dtype=torch.float64)
        self.seen = torch.zeros(shape, dtype=torch.float64)

    def _cells(self, confidence: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = depth.long().clamp(1, MAX_DEPTH) - 1
        return rows, torch.bucketize(confidence.double(), CONFIDENCE_EDGES)

    def predict(self, confidence: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        confidence = confidence.double().clamp(0, 1)
        rows, cols = self._cells(confidence, depth)
        return (self.hits[rows, cols] + PRIOR_WEIGHT * confidence) / (self.seen[rows, cols] + PRIOR_WEIGHT)

    def update(self, confidence: torch.Tensor, depth: torch.Tensor, accepted: torch.Tensor) -> None:
        rows, cols = self._cells(confidence, depth)
        self.hits *= FORGETTING
        self.seen *= FORGETTING
        self.seen.index_put_((rows, cols), torch.ones_like(confidence, dtype=torch.float64), accumulate=True)
        self.hits.index_put_((rows, cols), accepted.double(), accumulate=True)


class RunningRatio:
    """A ratio over recent steps (tokens per ms, accepted per expected), as a ratio of running means:
    robust to one slow step, and following the text as it changes. With `warm_up`, the first
    1 / SMOOTHING steps weigh alike (their plain mean), so that a fresh estimate is not its first step's
    alone with the next ones nudging it; without, the first step sets it."""

    def __init__(self, numerator: float = 0.0, denominator: float = 0.0, warm_up: bool = False) -> None:
        self.numerator, self.denominator = numerator, denominator
        self.warm_up, self.count = warm_up, 0

    def add(self, numerator: float, denominator: float) -> None:
        self.count += 1
        if self.denominator == 0.0:
            self.numerator, self.denominator = numerator, denominator
            return
        weight = max(SMOOTHING, 1.0 / self.count) if self.warm_up else SMOOTHING
        self.numerator += weight * (numerator - self.numerator)
        self.denominator += weight * (denominator - self.denominator)

    @property
    def value(self) -> float | None:
        return self.numerator / self.denominator if self.denominator > 0 else None


class CostScales:
    """The cost curve corrected by this run's verifications: measured ms / the curve's ms, learned as a
    running mean at each anchor size (a step counts at the anchor nearest its token count, in log
    scale), interpolated between anchors in log size (constant past the outermost measured ones), and
    kept non-decreasing. Before any step it is the curve itself."""

    ANCHORS = (1, 2, 4, 8, 16, 32, 64)

    def __init__(self, cost: torch.Tensor) -> None:
        self.cost = cost  # cost[t]: the curve's ms for t tokens, t = 0..max (index 0 unused)
        self.anchors = [a for a in self.ANCHORS if a < len(cost)]
        self.ratios: dict[int, float] = {}
        self.counts: dict[int, int] = {}
        self.priced = cost.clone()  # what verifying t tokens costs now, in ms
        self._log_sizes = np.log2(np.arange(1, len(cost)))

    def observe(self, tokens: int, ms: float) -> None:
        if not 1 <= tokens < len(self.cost) or ms <= 0:
            return
        anchor = min(self.anchors, key=lambda a: abs(np.log2(a / tokens)))
        ratio = ms / float(self.cost[tokens])
        # the mean of an anchor's first 1 / SMOOTHING steps, then a running mean: each anchor has to be
        # right from its first steps, since sizes are priced against each other. (Moving a tenth of the
        # way from a prior instead, trees kept the curve's price while plain steps, measured during the
        # pauses, fell to theirs: trees looked dear, so the budget paused, so only plain steps were
        # measured; hass-math went from 1.35x to plain decoding on GSM8K.)
        self.counts[anchor] = self.counts.get(anchor, 0) + 1
        old = self.ratios.get(anchor, ratio)
        self.ratios[anchor] = old + max(SMOOTHING, 1 / self.counts[anchor]) * (ratio - old)
        known = sorted(self.ratios)
        scale = np.interp(self._log_sizes, np.log2(known), [self.ratios[a] for a in known])
        priced = self.cost[1:] * torch.from_numpy(scale)
        self.priced = torch.cat([self.cost[:1], priced.cummax(0).values])

    @property
    def plain_ratio(self) -> float:
        """Measured / curve ms of a one-token forward (1 before any measurement)."""
        return float(self.priced[1] / self.cost[1])


class TreeBudget:
    """The per-step decisions of the module docstring, for one proposer on one target."""

    def __init__(self, curve: CostCurve, max_nodes: int = 63):
        self.curve = curve
        self.max_nodes = max(0, min(max_nodes, curve.max_tokens - 1))
        # cost[t]: the curve's ms for a forward of t tokens (the root and t - 1 drafted nodes)
        self.cost = torch.tensor(curve.table()[: self.max_nodes + 2], dtype=torch.float64)
        self.costs = CostScales(self.cost)  # the curve corrected by this run's verifications
        self.level_rows = RunningRatio()  # drafted rows per ms of a drafting level
        self.draft_ms = RunningRatio()  # ms of drafting per drafting step, recent steps
        self._set_regime(_fresh_regime())  # what is learned of acceptance, apart by temperature
        self._sampling = False  # the regime in use: sampled (T > 0) or greedy
        self._regimes: dict[bool, dict] = {}  # the other regime's, while it waits
        self._sent: tuple[torch.Tensor, torch.Tensor] | None = None  # (confidence, depth) of verified nodes
        self._expected = 1.0  # tokens the current step is expected to emit (accepted + bonus)
        self._binned = 0.0  # its drafted tokens expected by the bins alone (before calibration)
        self._ingest_ms = 0.0  # drafting time spent this step taking in committed features
        self.steady_ingest = RunningRatio()  # ms of that per drafting step that followed a drafting step
        self._follows_draft = False  # the previous step of this sequence drafted

    def set_sampling(self, sampling: bool) -> None:
        """Learn acceptance apart for greedy (T = 0) and sampled (T > 0) generations, and switch to the
        one a generation needs: at T = 0 a node is accepted when it is the target's argmax, at T > 0
        with the target's residual probability, so bins, calibration, the realised rate and drafting's
        pauses learned at one temperature mislead at the other (a server or an eval grid alternates
        them). What the machine costs stays shared."""
        if sampling == self._sampling:
            return
        self._regimes[self._sampling] = {name: getattr(self, name) for name in REGIME_STATE}
        self._set_regime(self._regimes.pop(sampling, None) or _fresh_regime())
        self._sampling = sampling

    def _set_regime(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    @property
    def rate(self) -> float:
        """r: tokens per ms the generation achieves now (the plain step's rate before any evidence)."""
        return self.overall.value or self.plain_rate()

    def priced_ms(self, tokens: int) -> float:
        """What a forward of `tokens` tokens costs now: the curve as corrected by this run's verifications."""
        return float(self.costs.priced[min(tokens, len(self.cost) - 1)])

    @property
    def calibration_factor(self) -> float:
        """Drafted tokens accepted / expected by the bins, recent steps, within CALIBRATION_RANGE."""
        low, high = CALIBRATION_RANGE
        return min(max(self.calibration.value, low), high)

    def acceptance_p(self, confidence: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """p of each node: the bins' estimate times the calibration factor (at most 1)."""
        return (self.acceptance.predict(confidence, depth) * self.calibration_factor).clamp(max=1.0)

    def plain_rate(self) -> float:
        """Tokens per ms of a plain step, priced like the speculative ones: one token on the curve."""
        return 1.0 / self.priced_ms(1)

    def verifies_freely(self, nodes: int) -> bool:
        """Whether verifying `nodes` drafted nodes costs at most FLAT_TREE one-token forwards now.

        Then deciding level by level how far to draft (`frontier_width`) can save little verification,
        and it costs a host round trip per level: on an H200 a drafting step under the auto budget
        (5.7 ms, levels replayed from graphs, the decisions between them eager) cost as much as
        verifying a whole tree (5.9 ms), and auto ran behind the fixed tree in 5 of 6 cells. So where
        verification is this cheap, the tree drafter drafts the whole shape as one graph replay
        (`TreeDrafter.whole_expansion`), `choose` alone picks the nodes, and pauses still apply."""
        return self.priced_ms(nodes + 1) <= FLAT_TREE * self.priced_ms(1)

    def drafting_is_material(self) -> bool:
        """Whether drafting costs enough (recent steps, over a plain step) that pausing it saves time.

        A pause saves the drafting time and nothing else: which nodes are verified is `choose`'s call
        each step. Prompt lookup drafts in well under 1% of a CPU plain step, so pausing it saves
        nothing while it misses the matches that pay: on MT-Bench (CI-class EPYC, T = 0) its auto
        rows paused after strings of steps without a match, then probed once every 64 steps, and
        ran at 0.98x of plain decoding against 1.10x for its fixed tree."""
        return (self.draft_ms.value or 0.0) > MATERIAL_DRAFTING * self.priced_ms(1)

    # -- per step ----------------------------------------------------------------------------
    def new_sequence(self) -> None:
        """A new generation: its first drafting step takes in the whole prompt (see `_own_draft_ms`)."""
        self._follows_draft = False

    def should_draft(self) -> bool:
        """False during a pause: this step is plain decoding. The first step after a pause starts a
        probe: PROBE_STEPS drafting steps, judged afresh and together."""
        if not self.drafting and self.pause == 0:
            self.speculative = RunningRatio(warm_up=True)  # conditions may have changed since the pause
            self._probe_left, self._probing = PROBE_STEPS, True
        self.drafting = self.pause == 0
        self.pause = max(0, self.pause - 1)
        return self.drafting

    def choose(self, tree: DraftTree) -> DraftTree:
        """The prefix of nodes, best first, that maximises expected tokens minus r x verification time."""
        tree = tree.to("cpu")
        self._sent, self._expected, self._binned = None, 1.0, 0.0
        if not len(tree) or not self.max_nodes:
            return DraftTree.empty()
        # A non-finite score (seen once: the captured expansion on CUDA, random tiny drafter, cause not
        # yet found) must not poison the running means: such a node is priced as never accepted.
        confidence, depth = tree.scores.exp().nan_to_num(0.0), tree.depths()
        binned = _monotone(self.acceptance.predict(confidence, depth), tree.parents)
        p = (binned * self.calibration_factor).clamp(max=1.0)  # scaling keeps p monotone down the tree
        order = _best_first(p, depth)
        # A probe's steps verify at least their best node: a probe that verified nothing would teach the
        # bins nothing, and a budget whose estimates had sunk below paying would stay paused for good
        # (seen at T = 1: hass-math plain on whole GSM8K prompts it drafted at 1.2-1.3x before).
        least = 1 if self._probing else 0
        price = self.rate * self.costs.priced
        if tree.sampled:  # drawn nodes: chosen without looking at what was drawn (exactness)
            chosen = _exact_choice(tree.sampled_nodes, p, order, price, least, self.max_nodes)
        else:
            order = order[: self.max_nodes]
            chosen = order[: max(least, _best_count(p[order], price))]
        keep = chosen.sort().values  # ascending indices keep parents before children
        self._sent, self._expected = (confidence[keep], depth[keep]), 1.0 + float(p[chosen].sum())
        self._binned = float(binned[keep].sum())
        return tree.subtree(keep)

    def frontier_width(
        self, scores: torch.Tensor, depth: torch.Tensor, frontier: torch.Tensor, level: int
    ) -> int:
        """How many of the best frontier nodes (per member, by score) to expand into another level.

        Expanding node f can add at most p_f expected tokens (its children's acceptance sums to at
        most its own); it costs one drafted row (measured per level, `level_timed`) plus verifying
        what it adds. So a node is worth expanding while p_f > r x (ms per drafted row + the marginal
        verification ms per node at the current tree size); 0 stops drafting."""
        confidence, frontier = scores.exp().flatten().cpu(), frontier.exp().cpu()
        p = self.acceptance_p(confidence, depth.flatten().cpu()).sort(descending=True).values
        priced = self.costs.priced
        now = _best_count(p[: self.max_nodes], self.rate * priced)
        more = min(self.max_nodes, now + frontier.shape[-1]) - now
        if more <= 0:
            return 0
        verify_ms = float(priced[now + 1 + more] - priced[now + 1]) / more
        row_ms = 1.0 / self.level_rows.value if self.level_rows.value else 0.0
        p_frontier = self.acceptance_p(frontier, torch.full(frontier.shape, level))
        return int((p_frontier > self.rate * (row_ms + verify_ms)).sum(-1).max())

    def level_timed(self, rows: int, ms: float) -> None:
        """A drafting level forwarded `rows` frontier nodes in `ms` (drafter, head and bookkeeping)."""
        self.level_rows.add(rows, ms)

    def ingested(self, ms: float) -> None:
        """A drafter spent `ms` taking in the target features committed since it last drafted."""
        self._ingest_ms += ms

    def observe(
        self, accepted: int, tree_size: int, draft_ms: float, verify_ms: float, node_accepted: list[bool]
    ) -> None:
        """Learn from one verified step: acceptance per node, the cost corrections, the rates, and pauses."""
        self.costs.observe(tree_size + 1, verify_ms)
        if self._sent is not None and len(self._sent[0]) == tree_size:
            self.acceptance.update(*self._sent, torch.tensor(node_accepted, dtype=torch.bool))
            if tree_size:
                self.calibration.add(accepted, self._binned)
        self._sent = None
        tokens, ms = accepted + 1, draft_ms + verify_ms
        self.overall.add(tokens, ms)
        own_draft_ms = self._own_draft_ms(draft_ms)
        if not self.drafting:
            return
        # Judge drafting by expected tokens (calibrated p, summed over the verified nodes), not by this
        # step's realised ones, which swing from 1 to depth + 1; by its own drafting time (see
        # `_own_draft_ms`); and by its verification priced on the curve, like the plain step it is
        # compared with.
        self.draft_ms.add(own_draft_ms, 1.0)
        self.speculative.add(self._expected, own_draft_ms + self.priced_ms(tree_size + 1))
        if self._probe_left:  # a probe is judged once all its steps are in
            self._probe_left -= 1
            if self._probe_left:
                return
            self._probing = False
        if not self.drafting_is_material():
            return
        if self.speculative.value < (1.0 + SAFETY_MARGIN) * self.plain_rate():
            self.pause, self.next_pause = self.next_pause, min(2 * self.next_pause, MAX_PAUSE)
        else:
            self.next_pause = MIN_PAUSE

    def _own_draft_ms(self, draft_ms: float) -> float:
        """This step's drafting time as a drafting step costs when drafting goes on step after step.

        Every step a drafter takes in the features of the tokens the last step committed (a forward of
        1 + accepted rows): a real cost of drafting, ~2.5 ms against a 54 ms plain step for hass-math
        on the CI-class EPYC at T = 1, nearly the whole SAFETY_MARGIN. Left out of the judgement, it
        made drafting look ~5% cheaper than it was: hass-math drafted 91% of its T = 1 MT-Bench steps
        and ran at 0.92x of plain decoding; counted (with this module's other changes of 2026-12-04),
        1.07x (`benchmarks/results/amd-epyc-zen3-float32-auto-8-T1.json`). After a pause, or on a
        sequence's first step, the same forward takes in the pause's tokens or the whole prompt, which
        would make every probe look like a loss: those steps are charged the usual per-step ingest."""
        ingest_ms, self._ingest_ms = self._ingest_ms, 0.0
        steady, self._follows_draft = self._follows_draft and self.drafting, self.drafting
        if not self.drafting:
            return draft_ms
        if steady:
            self.steady_ingest.add(ingest_ms, 1.0)
            return draft_ms
        return max(0.0, draft_ms - ingest_ms) + (self.steady_ingest.value or 0.0)


REGIME_STATE = (
    "acceptance", "calibration", "overall", "speculative",
    "pause", "next_pause", "drafting", "_probe_left", "_probing",
)  # fmt: skip


def _fresh_regime() -> dict:
    """A regime's state before its first step (`TreeBudget.set_sampling`)."""
    return {
        "acceptance": AcceptanceModel(),
        # drafted tokens accepted / expected by the bins, recent steps; starts at 1 as if one step agreed
        "calibration": RunningRatio(1.0, 1.0),
        "overall": RunningRatio(),  # tokens per ms of the whole generation, recent steps
        "speculative": RunningRatio(warm_up=True),  # expected tokens per ms of drafting steps
        "pause": 0,
        "next_pause": MIN_PAUSE,
        "drafting": True,  # whether the current step drafts
        "_probe_left": PROBE_STEPS,  # drafting steps before drafting is judged (the regime's first)
        "_probing": False,  # a probe after a pause is under way
    }


def _best_count(p_sorted: torch.Tensor, price: torch.Tensor) -> int:
    """n maximising sum(p_sorted[:n]) - price[n + 1] (price[t]: what verifying t tokens forgoes)."""
    n = torch.arange(len(p_sorted) + 1)
    gain = torch.cat([torch.zeros(1, dtype=torch.float64), p_sorted.cumsum(0)]) - price[n + 1]
    return int(gain.argmax())


def _leading_count(p_sorted: torch.Tensor, price: torch.Tensor) -> int:
    """The leading nodes each of which adds more than it costs (p[j] > price[j + 2] - price[j + 1]),
    decided node by node without looking further down: a sampled node's descendants depend on its
    drawn token, so letting them decide whether it is verified would bias what it is accepted as."""
    n = torch.arange(1, len(p_sorted) + 1)
    losing = (p_sorted.double() <= price[n + 1] - price[n]).nonzero()
    return int(losing[0]) if len(losing) else len(p_sorted)


def _exact_choice(
    drawn: torch.Tensor, p: torch.Tensor, order: torch.Tensor, price: torch.Tensor, least: int, most: int
) -> torch.Tensor:
    """The nodes of a tree with drawn nodes to verify: the deterministic ones that pay among
    themselves (`_best_count`, best first), then the leading drawn nodes, in node order (a chain's from
    its root down), that each pay on top of them (`_leading_count`); `least` nodes at the least.

    Neither choice sees a drawn node's token or what hangs below it, which exactness needs of both
    (`DraftTree._exact_keep` says why); the deterministic nodes do not see the drawn ones at all."""
    fixed = order[~drawn[order]][:most]
    n_fixed = _best_count(p[fixed], price)
    sampled = drawn.nonzero().flatten()[: most - n_fixed]
    n_drawn = _leading_count(p[sampled], price[n_fixed:])
    if n_fixed + n_drawn < least:  # a probe verifies something: a deterministic node if there is one
        n_fixed = min(least, len(fixed))
        n_drawn = min(least - n_fixed, len(sampled))
    return torch.cat([fixed[:n_fixed], sampled[:n_drawn]])


def _monotone(p: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
    """A child is never likelier than its parent (it needs the parent accepted first)."""
    # One pass in topological order (parents precede children), in Python: a tree holds a few dozen
    # nodes at most, and per-node tensor ops cost ~5 us each, every step.
    out = p.tolist()
    for i, parent in enumerate(parents.tolist()):
        if parent >= 0:
            out[i] = min(out[i], out[parent])
    return torch.tensor(out, dtype=p.dtype)


def _best_first(p: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """Indices by p descending, ties to the shallower node: with monotone p, parents come first."""
    by_depth = torch.sort(depth, stable=True).indices
    return by_depth[torch.sort(-p[by_depth], stable=True).indices]


class BudgetedProposer(Proposer):
    """Any proposer under a TreeBudget: drafts only when drafting pays, verifies only the nodes that pay.

    During a pause the step is plain decoding; the target features of the positions committed
    meanwhile are handed to the inner proposer in one batch when it drafts again. `history` (one
    entry per step, None for plain steps) mirrors the inner proposer's for evaluation."""

    def __init__(self, inner: Proposer, budget: TreeBudget):
        self.inner, self.budget, self.name = inner, budget, inner.name
        self.pending: torch.Tensor | None = None
        self.history: list | None = [] if hasattr(inner, "history") else None
        inner.attach_budget(budget)

    @property
    def choices(self) -> list[int]:
        return getattr(self.inner, "choices", [])

    def reset(self) -> None:
        """A new sequence. The budget keeps what it learned, a running pause included: on a machine
        where drafting barely pays, restarting every generation with drafting would lose its first
        steps again each time (the next probe tells when drafting pays again)."""
        self.inner.reset()
        self.budget.new_sequence()
        self.pending = None
        if self.history is not None:
            self.history = []

    def propose(self, tokens: torch.Tensor, features: torch.Tensor) -> DraftTree:
        if self.pending is not None:
            features = torch.cat([self.pending, features])
        if not self.budget.should_draft():
            self.pending = features
            if self.history is not None:
                self.history.append(None)
            return DraftTree.empty()
        self.pending = None
        tree = self.inner.propose(tokens, features)
        if self.history is not None:
            self.history.append(self.inner.history[-1])
        return self.budget.choose(tree)

    def sample_drafts(self, temperature: float, generator: torch.Generator) -> None:
        self.budget.set_sampling(temperature > 0)
        self.inner.sample_drafts(temperature, generator)

    def observe(self, record) -> None:
        self.budget.observe(
            record.accepted, record.tree_size, record.draft_ms, record.verify_ms, record.node_accepted
        )
