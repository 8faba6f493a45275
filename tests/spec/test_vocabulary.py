"""The context vocabulary: the tokens of the context a drafter's own vocabulary lacks, scored by the
target's head and shared across a stack of drafters without drafting any token twice."""

import torch

from taps.models.stacked import stack_drafters
from taps.spec.propose import DrafterProposer, TreeShape
from taps.spec.vocabulary import ContextVocabulary, context_vocabulary
from tests.conftest import random_drafter


def _pair(target):
    a, b = random_drafter(target, seed=1, draft_vocab=40), random_drafter(target, seed=2, draft_vocab=40)
    return a, b, stack_drafters([a, b])


def test_only_tokens_some_member_lacks_are_added_once(tiny_target):
    a, b, stacked = _pair(tiny_target)
    in_a = set(a.d2t.tolist())
    in_b = set(b.d2t.tolist())
    both, only_a = sorted(in_a & in_b)[0], sorted(in_a - in_b)[0]
    neither = sorted(set(range(tiny_target.shape.vocab_size)) - in_a - in_b)[0]
    vocab = ContextVocabulary(stacked)
    vocab.add(torch.tensor([both, only_a, neither, neither]))
    vocab.add(torch.tensor([only_a, neither]))
    assert vocab.ids.tolist() == sorted([only_a, neither])
    # the member that has a token scores the added copy at -inf; nobody has `neither`
    i_a, i_n = vocab.ids.tolist().index(only_a), vocab.ids.tolist().index(neither)
    assert vocab.bias[0, i_a] == -torch.inf and vocab.bias[1, i_a] == 0
    assert (vocab.bias[:, i_n] == 0).all()
    ids = vocab.token_ids()
    assert ids.shape == (2, 40 + 2) and torch.equal(ids[:, :40], stacked.d2t)
    vocab.reset()
    assert len(vocab) == 0 and vocab.token_ids().shape == (2, 40)


def test_added_tokens_are_scored_by_the_target_head(tiny_target):
    drafter = random_drafter(tiny_target, seed=3, draft_vocab=40)
    proposer = DrafterProposer(drafter, TreeShape(4, 3, 10, vocabulary="context"))
    outside = sorted(set(range(tiny_target.shape.vocab_size)) - set(drafter.d2t.tolist()))[:3]
    tokens = torch.tensor([0, *outside, int(drafter.d2t[0])])
    features = torch.randn(len(tokens) - 1, tiny_target.shape.hidden_size)
    proposer.reset()
    proposer.propose(tokens, features)
    trees = proposer.trees
    assert trees.context.ids.tolist() == outside  # the first token pairs with no feature: not read in
    hidden = torch.randn(1, 2, tiny_target.shape.hidden_size)
    logits = trees._draft_logits(hidden)
    head = tiny_target.lm_head.weight
    assert logits.shape == (1, 2, 43)
    assert torch.allclose(logits[..., 40:], hidden @ head[outside].T, atol=1e-5)
    assert torch.equal(logits[..., :40], trees.model.draft_logits(hidden))  # its own head, as before
    assert trees._token_ids()[0, 40:].tolist() == outside


def test_no_context_vocabulary_where_nothing_could_be_added(tiny_target):
    whole = random_drafter(tiny_target, seed=3)  # trained over the whole vocabulary
    reduced = random_drafter(tiny_target, seed=3, draft_vocab=40)
    assert context_vocabulary(whole, "context") is None
    assert context_vocabulary(reduced, "trained") is None
    assert context_vocabulary(reduced, "whole") is None
    assert isinstance(context_vocabulary(reduced, "context"), ContextVocabulary)
    assert isinstance(context_vocabulary(reduced, "auto"), ContextVocabulary)  # (a GPU widens first)
