"""Greedy speculative decoding must reproduce the target's own greedy tokens exactly."""

import random

import pytest
import torch

from taps.spec.generate import GenerationConfig, SpeculativeGenerator
from taps.spec.ngram import NgramProposer
from taps.spec.propose import DrafterProposer, Proposer, TreeShape
from taps.spec.tree import DraftTree
from tests.conftest import FAMILIES, random_drafter, tiny_hf_model

PROMPTS = [[0, 5, 17, 23, 5, 17], [0, 44, 3], [0, 9, 9, 9, 9, 12, 80, 31, 9, 9]]


class OracleProposer(Proposer):
    """Knows the true greedy continuation; hides it among random siblings, cuts and corrupts it,
    so that every accept length (0 .. full) and deep compactions get exercised."""

    def __init__(self, reference: list[int], vocab: int, seed: int, source: int = 0):
        self.reference, self.vocab, self.rng, self.source = reference, vocab, random.Random(seed), source

    def propose(self, tokens, features):
        done = len(tokens)
        truth = self.reference[done : done + self.rng.randint(0, 6)]
        if truth and self.rng.random() < 0.3:
            truth[self.rng.randrange(len(truth))] = self.rng.randrange(self.vocab)
        paths = [
            [self.rng.randrange(self.vocab) for _ in range(self.rng.randint(1, 3))]
            for _ in range(self.rng.randint(0, 3))
        ]
        paths.insert(self.rng.randint(0, len(paths)), truth)
        return DraftTree.from_paths([p for p in paths if p], self.source)


def greedy(target, prompt, n=40):
    return SpeculativeGenerator(target).generate(prompt, GenerationConfig(max_new_tokens=n)).tokens


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_decoding_equals_transformers_greedy(family, tiny_dirs):
    from taps.models.target import TargetModel

    target = TargetModel.from_dir(tiny_dirs[family], dtype=torch.float32)
    hf = tiny_hf_model(family)
    for prompt in PROMPTS:
        ref = hf.generate(
            torch.tensor([prompt]), max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=1
        )[0, len(prompt) :].tolist()
        assert greedy(target, prompt, 30) == ref


@pytest.mark.parametrize(
    "shape",
    [
        TreeShape(1, 1, 1),
        TreeShape(4, 3, 10),
        TreeShape(8, 5, 24),
        TreeShape(3, 6, 60),
        TreeShape(8, 5, 24, drafts="sampled"),  # greedy decoding drafts the top-k tree all the same
    ],
)
@pytest.mark.parametrize("draft_vocab", [None, 40])
def test_drafter_trees_are_lossless(tiny_target, shape, draft_vocab):
    drafter = random_drafter(tiny_target, seed=3, draft_vocab=draft_vocab)
    gen = SpeculativeGenerator(tiny_target, DrafterProposer(drafter, shape))
    for prompt in PROMPTS:
        out = gen.generate(prompt, GenerationConfig(max_new_tokens=40))
        assert out.tokens == greedy(tiny_target, prompt)
        assert all(s.tree_size <= shape.total_tokens for s in out.steps)


@pytest.mark.parametrize("vocabulary", ["whole", "context"])
def test_a_drafter_scoring_more_than_its_vocabulary_is_lossless(tiny_target, vocabulary):
    """Widened to the target's whole vocabulary (as on a GPU), or grown by the context's tokens, a
    drafter trained over 40 tokens still gives the target's greedy output (its sampling:
    `test_sampling`)."""
    drafter = random_drafter(tiny_target, seed=3, draft_vocab=40)
    if vocabulary == "whole":
        drafter.widen_vocabulary(tiny_target)
    shape = TreeShape(8, 5, 24, vocabulary=vocabulary)
    gen = SpeculativeGenerator(tiny_target, DrafterProposer(drafter, shape))
    for prompt in PROMPTS:
        assert gen.generate(prompt, GenerationConfig(max_new_tokens=40)).tokens == greedy(tiny_target, prompt)


def test_oracle_trees_are_lossless_and_accept_deep_paths(tiny_target):
    for seed, prompt in enumerate(PROMPTS):
        ref = greedy(tiny_target, prompt, 60)
        gen = SpeculativeGenerator(tiny_target, OracleProposer(list(prompt) + ref, 96, seed))
        out = gen.generate(prompt, GenerationConfig(max_new_tokens=60))
        assert out.tokens == ref
        assert max(s.accepted for s in out.steps) >= 4
        assert out.tau > 1.5


def test_ngram_proposer_is_lossless(tiny_target):
    gen = SpeculativeGenerator(tiny_target, NgramProposer(max_ngram=3, length=6, branches=3))
    for prompt in PROMPTS:
        assert gen.generate(prompt, GenerationConfig(max_new_tokens=50)).tokens == greedy(
            tiny_target, prompt, 50
        )


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_sampling_emits_plain_samplings_tokens_at_the_same_seed(tiny_target, temperature, top_p):
    """Each token's draw is keyed by its place in the reply (`taps.spec.verify.Draws`), so at a given
    seed every proposer of deterministic drafts emits exactly what plain sampling emits: an oracle
    that drafts plain sampling's own continuation (among wrong siblings and corrupted copies, so that
    every accept length occurs), and random drafters alone, merged and routed."""
    from taps.spec.combine import MergedProposer, RoutedProposer

    shape = TreeShape(4, 4, 16)

    def members():
        return [
            DrafterProposer(random_drafter(tiny_target, seed=s), shape, source=i)
            for i, s in enumerate([3, 5])
        ]

    proposers = [
        NgramProposer(max_ngram=3, length=6, branches=3),
        DrafterProposer(random_drafter(tiny_target, seed=3), shape),
        MergedProposer(members()),
        RoutedProposer(members(), "confidence"),
    ]
    plain = SpeculativeGenerator(tiny_target)
    for seed, prompt in enumerate(PROMPTS):
        config = GenerationConfig(max_new_tokens=40, temperature=temperature, top_p=top_p, seed=seed)
        ref = plain.generate(prompt, config).tokens
        oracle = SpeculativeGenerator(tiny_target, OracleProposer(prompt + ref, 96, seed))
        out = oracle.generate(prompt, config)
        assert out.tokens == ref and sum(s.accepted for s in out.steps) >= 10
        for proposer in proposers:
            assert SpeculativeGenerator(tiny_target, proposer).generate(prompt, config).tokens == ref, (
                proposer.name
            )
    other_seed = GenerationConfig(max_new_tokens=40, temperature=temperature, top_p=top_p, seed=99)
    assert plain.generate(PROMPTS[0], other_seed).tokens != plain.generate(PROMPTS[0], config).tokens


def test_eos_and_budget_are_respected(tiny_target):
    prompt = PROMPTS[0]
    ref = greedy(tiny_target, prompt, 40)
    eos = ref[7]
    out = SpeculativeGenerator(tiny_target, OracleProposer(prompt + ref, 96, 0)).generate(
        prompt, GenerationConfig(max_new_tokens=40, eos_token_ids=(eos,))
    )
    assert out.tokens == ref[: ref.index(eos) + 1] and out.finish_reason == "eos"
    for n in (1, 2, 5):
        out = SpeculativeGenerator(tiny_target, OracleProposer(prompt + ref, 96, 1)).generate(
            prompt, GenerationConfig(max_new_tokens=n)
        )
        assert out.tokens == ref[:n]


def test_generation_past_the_targets_context_or_with_an_empty_stop_is_refused(tiny_target):
    from taps.errors import TapsError
    from taps.spec.generate import check_context

    context = tiny_target.shape.max_position_embeddings
    check_context(len(PROMPTS[0]), context - len(PROMPTS[0]), context)  # fills the context exactly: fits
    gen = SpeculativeGenerator(tiny_target)
    with pytest.raises(TapsError, match=f"exceeds the model's context of {context} tokens"):
        gen.generate(PROMPTS[0], GenerationConfig(max_new_tokens=context - 5))
    with pytest.raises(TapsError, match="stop strings must not be empty"):
        GenerationConfig(stop=("",))


def test_streamed_text_is_the_generations_text_stop_strings_included(tiny_target):
    """`taps generate` prints the pieces `on_text` gets as they come: together they must be the reply,
    nothing of a stop string or past it (a tail that could still become one is held back)."""
    from tests.training.test_training import CharTokenizer

    tokenizer, gen = CharTokenizer(), SpeculativeGenerator(tiny_target, NgramProposer())
    for prompt in (PROMPTS[0], PROMPTS[2]):
        whole = gen.generate(prompt, GenerationConfig(max_new_tokens=40), tokenizer).text
        for stop in ((), (whole[8:10],)):
            pieces: list[str] = []
            config = GenerationConfig(max_new_tokens=40, stop=stop)
            out = gen.generate(prompt, config, tokenizer, on_text=pieces.append)
            assert "".join(pieces) == out.text == (whole[: whole.find(stop[0])] if stop else whole)
            assert len(pieces) > 1 or stop
