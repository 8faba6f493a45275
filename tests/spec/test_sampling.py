"""Speculative sampling must leave the target's output distribution unchanged (chi-square, fixed seeds)."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from taps.models.target import TargetModel
from taps.spec.generate import GenerationConfig, SpeculativeGenerator
from taps.spec.propose import DrafterProposer, Proposer, TreeShape
from taps.spec.tree import DraftTree
from taps.spec.verify import target_probs, verify_sampling
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


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.6, 1.0), (1.0, 0.8)])
def test_verifier_emits_target_distribution_with_duplicate_siblings(temperature, top_p):
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
    for _ in range(20000):
        v = verify_sampling(tree, logits, temperature, gen, top_p)
        emitted = tree.tokens[v.accepted].tolist() + [v.bonus]
        first[emitted[0]] += 1
        if emitted[0] == 2:
            second_after_2[emitted[1]] += 1
    p = target_probs(logits, temperature, top_p).numpy()
    assert _chi2_ok(first, p[0])
    assert second_after_2.sum() > 2000
    assert _chi2_ok(second_after_2, p[1])  # row of node 0: the target's distribution after token 2


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


def _sampling_target(folder):
    """A tiny target with flat output distributions, a prompt, and the exact marginal of its second
    generated token."""
    vocab = 12
    hf = tiny_hf_model("llama", vocab=vocab, seed=5)
    with torch.no_grad():
        hf.lm_head.weight.mul_(0.4)  # flatter distributions: many tokens get mass
    hf.save_pretrained(str(folder))
    target = TargetModel.from_dir(folder, dtype=torch.float32)
    prompt = [0, 3, 7]
    with torch.no_grad():
        p1 = torch.softmax(hf(torch.tensor([prompt])).logits[0, -1], -1)
        seqs = torch.tensor([prompt + [a] for a in range(vocab)])
        p2_given = torch.softmax(hf(seqs).logits[:, -1], -1)
    return target, prompt, p1 @ p2_given


@pytest.mark.parametrize("variant", ["drafter", "duplicate siblings", "widened vocabulary"])
def test_generated_tokens_follow_the_target_distribution(tmp_path, variant):
    """Also for a drafter trained over part of the vocabulary, widened to all of it (as on a GPU)."""
    target, prompt, p2 = _sampling_target(tmp_path)
    vocab = len(p2)
    if variant == "widened vocabulary":
        drafter = random_drafter(target, seed=2, draft_vocab=vocab // 2).widen_vocabulary(target)
    else:
        drafter = random_drafter(target, seed=2)
    proposer = DrafterProposer(drafter, TreeShape(top_k=3, depth=3, total_tokens=8))
    gen = SpeculativeGenerator(
        target, _DuplicatingProposer(proposer) if variant == "duplicate siblings" else proposer
    )
    counts, accepted = np.zeros(vocab), 0
    for seed in range(3000):
        out = gen.generate(prompt, GenerationConfig(max_new_tokens=2, temperature=1.0, seed=seed))
        counts[out.tokens[1]] += 1
        accepted += out.steps[0].accepted
    assert accepted > 300  # the drafts really are being accepted, so the tree path is exercised
    assert _chi2_ok(counts, p2.numpy())
