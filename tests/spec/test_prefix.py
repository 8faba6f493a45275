"""A kept prefix: the next turn reads only its new tokens and decodes what a fresh cache would."""

import pytest
import torch

from taps.spec.generate import GenerationConfig, SpeculativeGenerator
from taps.spec.ngram import NgramProposer
from taps.spec.prefix import PrefixCache
from taps.spec.propose import DrafterProposer, TreeShape
from tests.conftest import random_drafter

FIRST = [0, 5, 17, 23, 5, 17, 9, 9, 12]


def counting_reads(target, monkeypatch) -> list[int]:
    """The token count of every target forward from now on."""
    reads: list[int] = []
    run = target.run_layers
    monkeypatch.setattr(
        target, "run_layers", lambda tokens, *a, **k: reads.append(len(tokens)) or run(tokens, *a, **k)
    )
    return reads


def make_proposers(target):
    yield None
    yield NgramProposer(max_ngram=3, length=6, branches=3)
    yield DrafterProposer(random_drafter(target, seed=3), TreeShape(4, 3, 10))


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_conversations_next_turn_reads_only_its_new_tokens(tiny_target, monkeypatch, temperature):
    config = GenerationConfig(max_new_tokens=30, temperature=temperature, seed=4)
    for proposer in make_proposers(tiny_target):
        kept = SpeculativeGenerator(tiny_target, proposer, prefix=PrefixCache())
        first = kept.generate(FIRST, config)
        second_turn = FIRST + first.tokens + [7, 44, 3]
        held = len(
            kept.prefix.kept[-1].ids
        )  # past the reply's last token if the last step accepted past the budget
        reads = counting_reads(tiny_target, monkeypatch)
        second = kept.generate(second_turn, config)
        # the new message, and the reply's last token unless the cache holds it: the rest was kept
        assert reads[0] == (3 if held >= len(second_turn) - 3 else 4)
        monkeypatch.undo()
        fresh = SpeculativeGenerator(tiny_target, proposer).generate(second_turn, config)
        assert second.tokens == fresh.tokens
        # the proposer read the whole context again from the kept features: it drafted alike
        assert [r.accepted for r in second.steps] == [r.accepted for r in fresh.steps]


def test_only_the_shared_prefix_is_reused(tiny_target, monkeypatch):
    kept = SpeculativeGenerator(tiny_target, NgramProposer(), prefix=PrefixCache())
    config = GenerationConfig(max_new_tokens=20)
    kept.generate(FIRST, config)
    edited = FIRST[:4] + [60, 61, 62]  # an earlier message changed: its tokens on are read again
    reads = counting_reads(tiny_target, monkeypatch)
    again = kept.generate(edited, config)
    assert reads[0] == 3
    reads.clear()
    same = kept.generate(edited, config)  # the same prompt again: its last token is read for its logits
    assert reads[0] == 1
    monkeypatch.undo()
    assert again.tokens == same.tokens == SpeculativeGenerator(tiny_target).generate(edited, config).tokens


def test_a_prefix_is_never_reused_across_targets(tiny_dirs):
    from taps.models.target import TargetModel

    prefix = PrefixCache()
    llama, qwen = (TargetModel.from_dir(tiny_dirs[f], dtype=torch.float32) for f in ("llama", "qwen2"))
    SpeculativeGenerator(llama, prefix=prefix).generate(FIRST, GenerationConfig(max_new_tokens=8))
    cache, reused = prefix.take(qwen, FIRST + [3], 64)
    assert reused is None and cache.length == 0 and prefix.model is qwen


@pytest.mark.parametrize("sequences", [1, 2])
def test_interleaved_conversations_keep_their_own_caches(tiny_target, monkeypatch, sequences):
    """Two conversations under one system prompt take turns (a server's clients): with room for
    both, each next turn reads only its new tokens; with room for one, each turn finds only the system
    prompt (a new conversation copies the shared rows: it never cuts the other's cache short).
    Replies are a fresh cache's always."""
    prefix = PrefixCache(sequences)
    kept = SpeculativeGenerator(tiny_target, NgramProposer(), prefix=prefix)
    config = GenerationConfig(max_new_tokens=12)
    system = [0, 5, 17, 23]
    prompts = {"a": system + [9, 9, 12], "b": system + [44, 3, 80, 31]}
    first = {name: kept.generate(prompt, config).tokens for name, prompt in prompts.items()}
    for name, message in (("a", [7, 8]), ("b", [6])):
        turn = prompts[name] + first[name] + message
        reads = counting_reads(tiny_target, monkeypatch)
        reply = kept.generate(turn, config).tokens
        monkeypatch.undo()
        assert reads[0] == len(turn) - prefix.reused
        if sequences == 2:  # the message, and the reply's last token unless the cache held it
            assert len(turn) - prefix.reused <= len(message) + 1
        else:
            assert prefix.reused == len(system)
        assert reply == SpeculativeGenerator(tiny_target).generate(turn, config).tokens
    assert len(prefix.kept) == sequences
