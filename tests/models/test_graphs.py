"""The static-cache, bucketed forward behind the CUDA graphs, run eagerly on the CPU: same results."""

import pytest
import torch

from taps.models.graphs import GraphedTarget
from taps.spec.generate import GenerationConfig, SpeculativeGenerator
from taps.spec.ngram import NgramProposer
from taps.spec.propose import DrafterProposer, TreeShape
from tests.conftest import random_drafter
from tests.spec.test_lossless import PROMPTS, greedy


def test_padded_static_forward_matches_the_plain_one(tiny_target):
    graphed = GraphedTarget(tiny_target, buckets=(1, 4, 8), capture=False)
    tokens = torch.tensor([0, 5, 17, 23, 5, 17, 9, 3, 44, 12, 80])
    tree = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    outs = []
    for model in (tiny_target, graphed):
        cache = model.new_cache(64)
        a = model(tokens[:9], cache)  # longer than every bucket: the eager static path
        b = model(tokens[9:10], cache)  # bucket 1
        c = model(tokens[8:11], cache, torch.tensor([10, 11, 11]), tree)  # padded to bucket 4
        outs.append(torch.cat([a, b, c]))
        assert cache.length == 13
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=1e-5)


def test_static_cache_grows_for_long_generations(tiny_target):
    graphed = GraphedTarget(tiny_target, buckets=(1, 2), capture=False)
    small = graphed.new_cache(16)
    assert graphed.capacity >= 16 and graphed.new_cache(8) is small
    assert graphed.new_cache(5000) is not small and graphed.capacity >= 5000


@pytest.mark.parametrize("proposer", ["none", "ngram", "drafter"])
def test_generation_through_the_static_path_is_lossless(tiny_target, proposer):
    make = {
        "none": lambda: None,
        "ngram": NgramProposer,
        "drafter": lambda: DrafterProposer(random_drafter(tiny_target, seed=3), TreeShape(8, 5, 24)),
    }
    gen = SpeculativeGenerator(tiny_target, make[proposer](), graphs=True)
    assert isinstance(gen.target, GraphedTarget)
    for prompt in PROMPTS:
        assert gen.generate(prompt, GenerationConfig(max_new_tokens=40)).tokens == greedy(tiny_target, prompt)
