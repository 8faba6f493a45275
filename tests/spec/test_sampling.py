"""Speculative sampling must leave the target's output distribution unchanged (chi-square, fixed seeds)."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from taps.models.target import TargetModel
from taps.spec.generate import GenerationConfig, SpeculativeGenerator
from taps.spec.propose import SAMPLED_FROM, DrafterProposer, Proposer, TreeShape
from taps.spec.tree import DraftTree
from taps.spec.verify import Draws, target_probs, verify_sampling
from tests.conftest import random_drafter, tiny_hf_model

ALPHA = 1e-3  # a correct sampler fails one of these tests about once in a thousand seeds


def _chi2_ok(counts: np.ndarray, probs: np.ndarray) -> bool:
    probs = probs.astype(np.float64) / probs.sum()
    assert counts[probs == 0].sum() == 0, "sampled a token the target gives zero probability"
    keep = probs * counts.sum() >= 5  # pool tiny cells so the test's approximation holds
    obs, exp = counts[keep], probs[keep]
    if (~keep & (probs > 0)).any():
        obs, exp = np.append(obs, counts[~keep].sum()), np.append(exp, probs[~keep].sum())
    return chisquare(obs, exp / exp.sum() * obs.sum()).pvalue > ALPHA


@pytest.mark.parametrize("by_draws", [False, True], ids=["residual walk", "keyed draws"])
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.6, 1.0), (1.0, 0.8)])
def test_verifier_emits_target_distribution_with_duplicate_siblings(temperature, top_p, by_draws):
    vocab = 6
    logits = torch.randn(6, vocab, generator=torch.Generator().manual_seed(0)) * 1.5
    logits[0, 2] += 2.0  # token 2 is likely at the root, so its subtree is sampled often
    # root children: 2, 4, 2 (duplicate); node 0 (token 2) has children 1, 3, 1 (duplicate)
    tree = DraftTree(
        tokens=torch.tensor([2, 4, 2, 1, 3, 1]),
        parents=torch.tensor([-1, -1, -1, 0, 0, 0]),
        scores=torch.zeros(6),
        entropies=torch.zeros(6),
        sources=torch.zeros(6, dtype=torch.long),
    )
    gen = torch.Generator().manual_seed(1)
    first, second_after_2 = np.zeros(vocab), np.zeros(vocab)
    for seed in range(20000):
        draws = Draws(seed) if by_draws else None  # a reply's own draws (one reply per seed), or none
        v = verify_sampling(tree, logits, temperature, gen, top_p, draws, place=3)
        emitted = tree.tokens[v.accepted].tolist() + [v.bonus]
        first[emitted[0]] += 1
        if emitted[0] == 2:
            second_after_2[emitted[1]] += 1
    p = target_probs(logits, temperature, top_p).numpy()
    assert _chi2_ok(first, p[0])
    assert second_after_2.sum() > 2000
    assert _chi2_ok(second_after_2, p[1])  # row of node 0: the target's distribution after token 2


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.6, 1.0), (1.0, 0.8)])
def test_verifier_emits_target_distribution_for_sampled_chains(temperature, top_p):
    """A chain of tokens drawn from proposal distributions q (over part of the vocabulary, as a drafter's
    draft vocabulary), verified by speculative sampling: every emitted token follows the target."""
    vocab = 6
    gen_logits = torch.Generator().manual_seed(0)
    logits = torch.randn(3, vocab, generator=gen_logits) * 1.5
    ids = torch.tensor([0, 2, 3, 5])  # the proposals' support: tokens 1 and 4 are never drafted
    q = torch.softmax(torch.randn(2, len(ids), generator=gen_logits), -1)
    gen = torch.Generator().manual_seed(1)
    first, second = np.zeros(vocab), np.zeros(vocab)
    accepted = 0
    for _ in range(20000):
        draws = [int(ids[torch.multinomial(q[i], 1, generator=gen)]) for i in range(2)]
        tree = DraftTree(
            tokens=torch.tensor(draws),
            parents=torch.tensor([-1, 0]),
            scores=torch.zeros(2),
            entropies=torch.zeros(2),
            sources=torch.zeros(2, dtype=torch.long),
            proposals=q,
            proposal_ids=ids,
        )
        v = verify_sampling(tree, logits, temperature, gen, top_p)
        emitted = tree.tokens[v.accepted].tolist() + [v.bonus]
        first[emitted[0]] += 1
        if v.accepted:  # after the first node the target's row is logits[1], whatever was drawn here
            second[emitted[1]] += 1
            accepted += 1
    p = target_probs(logits, temperature, top_p).numpy()
    assert accepted > 5000
    assert _chi2_ok(first, p[0])
    assert _chi2_ok(second, p[1])


class _DuplicatingProposer(Proposer):
    """Wraps a proposer and repeats its root children, so the verifier sees duplicate siblings."""

    def __init__(self, inner):
        self.inner = inner

    def reset(self):
        self.inner.reset()

    def propose(self, tokens, features):
        t = self.inner.propose(tokens, features)
        roots = (t.parents < 0).nonzero().flatten()
        return DraftTree(
            torch.cat([t.tokens, t.tokens[roots]]),
            torch.cat([t.parents, t.parents[roots]]),
            torch.cat([t.scores, t.scores[roots]]),
            torch.cat([t.entropies, t.entropies[roots]]),
            torch.cat([t.sources, t.sources[roots]]),
        )


def _sampling_target(folder, prompt: tuple[int, ...] = (0, 3, 7)):
    """A tiny target with flat output distributions, a prompt, and the exact marginal of its second
    generated token."""
    vocab = 12
    hf = tiny_hf_model("llama", vocab=vocab, seed=5)
    with torch.no_grad():
        hf.lm_head.weight.mul_(0.4)  # flatter distributions: many tokens get mass
    hf.save_pretrained(str(folder))
    target = TargetModel.from_dir(folder, dtype=torch.float32)
    prompt = list(prompt)
    with torch.no_grad():
        p1 = torch.softmax(hf(torch.tensor([prompt])).logits[0, -1], -1)
        seqs = torch.tensor([prompt + [a] for a in range(vocab)])
        p2_given = torch.softmax(hf(seqs).logits[:, -1], -1)
    return target, prompt, p1 @ p2_given


@pytest.mark.parametrize(
    "variant",
    [
        "drafter",
        "duplicate siblings",
        "widened vocabulary",
        "context vocabulary",
        "sampled",
        "sampled, draft vocabulary",
        "sampled, context vocabulary",
    ],
)
def test_generated_tokens_follow_the_target_distribution(tmp_path, variant):
    """Also for a drafter trained over part of the vocabulary, widened to all of it (as on a GPU) or
    grown by the context's tokens, and for sampled drafts (`--drafts sampled`), over the whole
    vocabulary, a draft vocabulary or a context vocabulary."""
    target, prompt, p2 = _sampling_target(tmp_path)
    vocab = len(p2)
    if variant == "widened vocabulary":
        drafter = random_drafter(target, seed=2, draft_vocab=vocab // 2).widen_vocabulary(target)
    elif "vocabulary" in variant:
        drafter = random_drafter(target, seed=2, draft_vocab=vocab // 2)
    else:
        drafter = random_drafter(target, seed=2)
    drafts = "sampled" if variant.startswith("sampled") else "top-k"
    vocabulary = "context" if "context" in variant else "trained"
    shape = TreeShape(top_k=3, depth=3, total_tokens=8, drafts=drafts, vocabulary=vocabulary)
    proposer = DrafterProposer(drafter, shape)
    gen = SpeculativeGenerator(
        target, _DuplicatingProposer(proposer) if variant == "duplicate siblings" else proposer
    )
    counts, accepted = np.zeros(vocab), 0
    for seed in range(3000):
        out = gen.generate(prompt, GenerationConfig(max_new_tokens=2, temperature=1.0, seed=seed))
        counts[out.tokens[1]] += 1
        accepted += out.steps[0].accepted
    assert accepted > 300  # the drafts really are being accepted, so the tree path is exercised
    assert (proposer.trees.sampling is not None) == (drafts == "sampled")  # it really drafted by sampling
    if vocabulary == "context":  # the prompt's tokens outside the draft vocabulary were added
        assert len(proposer.trees.context) > 0
    assert _chi2_ok(counts, p2.numpy())


def test_a_sampled_chain_is_shaped_by_its_ancestors_alone(tiny_target):
    """Exactness needs whether a sampled node is drafted and verified not to depend on its own token:
    a node scores its parent's score plus the log of its proposal's largest probability, whatever was
    drawn, and without a budget the chain always runs the shape's depth."""
    drafter = random_drafter(tiny_target, seed=2, draft_vocab=40)
    proposer = DrafterProposer(drafter, TreeShape(3, 4, 8, drafts="sampled"))
    features = torch.randn(5, tiny_target.shape.hidden_size, generator=torch.Generator().manual_seed(0))
    tokens = torch.tensor([3, 9, 4, 7, 1, 2])
    first_scores, first_tokens = set(), set()
    for seed in range(12):
        proposer.reset()
        proposer.sample_drafts(1.0, torch.Generator().manual_seed(seed))
        tree = proposer.propose(tokens, features)
        assert tree.sampled and len(tree) == 4 and tree.parents.tolist() == [-1, 0, 1, 2]
        parent_scores = torch.cat([torch.zeros(1), tree.scores[:-1]])
        assert torch.allclose(tree.scores, parent_scores + tree.proposals.max(-1).values.log())
        drawn = (tree.proposal_ids[None] == tree.tokens[:, None]).float().argmax(-1)
        assert bool((tree.proposals.gather(1, drawn[:, None]) > 0).all())  # each token from its proposal
        first_scores.add(round(float(tree.scores[0]), 6))
        first_tokens.add(int(tree.tokens[0]))
    assert len(first_tokens) > 1 and len(first_scores) == 1  # drawn tokens vary; the first score does not
    proposer.sample_drafts(0.0, torch.Generator())  # greedy: the top-k tree
    proposer.reset()
    assert not proposer.propose(tokens, features).sampled
    auto = DrafterProposer(drafter, TreeShape(3, 4, 8))  # `--drafts auto` without a budget: top-k
    auto.sample_drafts(1.0, torch.Generator())
    assert auto.trees.sampling is None
    auto.attach_budget(object())  # under a budget: drawn chains from SAMPLED_FROM up, top-k below
    auto.sample_drafts(SAMPLED_FROM, torch.Generator())
    assert auto.trees.sampling is not None
    auto.sample_drafts(0.8, torch.Generator())
    assert auto.trees.sampling is None


@pytest.mark.parametrize("scale", [0.5, 3.0, 10.0])  # flat (every token sorted) to peaked (the probe alone)
def test_the_nucleus_is_the_smallest_set_of_likeliest_tokens_reaching_top_p(scale):
    logits = torch.randn(3, 4000, generator=torch.Generator().manual_seed(int(scale * 10))) * scale
    for top_p in (0.5, 0.9, 0.99):
        got = target_probs(logits, 0.8, top_p)
        probs = torch.softmax(logits / 0.8, -1)
        for row, p in zip(got, probs):
            kept = row > 0
            order = p.sort(descending=True).indices
            size = int(kept.sum())
            assert kept[order[:size]].all()  # the likeliest tokens, no other
            assert p[order[: size - 1]].sum() < top_p <= p[order[:size]].sum() + 1e-6  # the fewest
            torch.testing.assert_close(row[kept], p[kept] / p[kept].sum())


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_a_keyed_draw_is_the_same_from_a_tree_s_rows_as_from_its_own_row(top_p):
    """On CUDA `verify_sampling` computes every tree row's distribution at once and draws from its row
    (one transfer); a plain step computes one row alone. Keyed draws give the target's own reply only
    if both ways draw the same token: rows of mixed flatness (with top_p, the flat ones make the batch
    sort everything where a peaked row alone sorts its probe) must give each row the same bits."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 49152, generator=gen) * torch.tensor([0.3, 1, 3, 10, 0.5, 2, 8, 1, 0.2])[:, None]
    batch = target_probs(logits, 0.8, top_p)
    for row in range(len(logits)):
        alone = target_probs(logits[row], 0.8, top_p)
        assert torch.equal(batch[row], alone), f"row {row}"
        for place in range(5):
            assert Draws(7).token(batch[row], place) == Draws(7).token(alone, place)
