"""Log-probabilities of the emitted tokens: the target's own, whatever drafted them."""

import pytest
import torch

from taps.errors import TapsError
from taps.spec.generate import GenerationConfig, SpeculativeGenerator
from taps.spec.ngram import NgramProposer
from taps.spec.propose import DrafterProposer, TreeShape
from tests.conftest import random_drafter
from tests.spec.test_lossless import PROMPTS, OracleProposer, greedy


def forward_logprobs(target, prompt: list[int], reply: list[int]) -> torch.Tensor:
    """The target's log-softmax at each reply position, from one forward over prompt + reply."""
    ids = prompt + reply
    hidden = target(torch.tensor(ids), target.new_cache(len(ids) + 1))
    return torch.log_softmax(target.logits(hidden).float(), -1)[len(prompt) - 1 : len(ids) - 1]


def proposers(target, prompt: list[int]):
    yield "plain", None
    yield "drafter", DrafterProposer(random_drafter(target, seed=3), TreeShape(4, 3, 10))
    yield "oracle", OracleProposer(prompt + greedy(target, prompt, 40), 96, seed=1)
    yield "ngram", NgramProposer(max_ngram=3, length=6, branches=3)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_logprobs_are_the_targets_own_at_every_emitted_token(tiny_target, temperature):
    config = GenerationConfig(max_new_tokens=40, temperature=temperature, seed=5, logprobs=3)
    for prompt in PROMPTS:
        for name, proposer in proposers(tiny_target, prompt):
            out = SpeculativeGenerator(tiny_target, proposer).generate(prompt, config)
            assert [e.token for e in out.logprobs] == out.tokens, name
            expected = forward_logprobs(tiny_target, prompt, out.tokens)
            got = torch.tensor([e.logprob for e in out.logprobs])
            want = expected[torch.arange(len(out.tokens)), torch.tensor(out.tokens)]
            torch.testing.assert_close(got, want, atol=1e-4, rtol=0, msg=name)
            best, ids = expected.topk(3, -1)
            assert [[t for t, _ in e.top] for e in out.logprobs] == ids.tolist(), name
            torch.testing.assert_close(
                torch.tensor([[lp for _, lp in e.top] for e in out.logprobs]), best, atol=1e-4, rtol=0
            )
            if temperature == 0:  # greedy: the emitted token is the most likely one
                assert all(e.top[0][0] == e.token for e in out.logprobs), name


def test_logprobs_change_nothing_else_and_are_cut_with_the_reply(tiny_target):
    prompt = PROMPTS[2]
    proposer = OracleProposer(prompt + greedy(tiny_target, prompt, 40), 96, seed=2)
    plain = SpeculativeGenerator(tiny_target, proposer).generate(prompt, GenerationConfig(max_new_tokens=40))
    assert plain.logprobs == []
    eos = plain.tokens[9]
    proposer = OracleProposer(prompt + greedy(tiny_target, prompt, 40), 96, seed=2)
    config = GenerationConfig(max_new_tokens=40, eos_token_ids=(eos,), logprobs=0)
    scored = SpeculativeGenerator(tiny_target, proposer).generate(prompt, config)
    assert scored.tokens == plain.tokens[: plain.tokens.index(eos) + 1]
    assert [e.token for e in scored.logprobs] == scored.tokens and all(e.top == () for e in scored.logprobs)


@pytest.mark.parametrize("logprobs", [-1, 21])
def test_logprobs_out_of_range_are_refused(logprobs):
    with pytest.raises(TapsError, match=r"logprobs must be in \[0, 20\]"):
        GenerationConfig(logprobs=logprobs)


def test_prompt_logprobs_score_every_token_after_the_first_in_pieces_or_not(tiny_target):
    from taps.spec.logprobs import prompt_logprobs

    prompt = PROMPTS[2]
    whole, pieces = prompt_logprobs(tiny_target, prompt, 2), prompt_logprobs(tiny_target, prompt, 2, rows=3)
    assert [e.token for e in whole] == [e.token for e in pieces] == prompt and whole[0].logprob is None
    assert [[t for t, _ in e.top] for e in whole] == [[t for t, _ in e.top] for e in pieces]
    lps = [torch.tensor([e.logprob for e in scores[1:]]) for scores in (whole, pieces)]
    torch.testing.assert_close(lps[0], lps[1], atol=1e-5, rtol=0)  # the head's rows round by their count
    want = forward_logprobs(tiny_target, prompt[:1], prompt[1:])  # the same positions, read as a reply
    got = torch.tensor([e.logprob for e in whole[1:]])
    torch.testing.assert_close(
        got, want[torch.arange(len(prompt) - 1), torch.tensor(prompt[1:])], atol=1e-5, rtol=0
    )
