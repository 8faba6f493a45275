"""The static-cache, bucketed forward behind the CUDA graphs, run eagerly on the CPU: same results."""

import pytest
import torch

from taps.models.graphs import GraphedDrafter, GraphedTarget, fill_mask
from taps.models.layers import attention_mask
from taps.models.stacked import stack_drafters
from taps.spec.generate import GenerationConfig, SpeculativeGenerator
from taps.spec.ngram import NgramProposer
from taps.spec.propose import DrafterProposer, TreeDrafter, TreeShape
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


def test_the_first_token_is_chosen_over_the_whole_vocabulary(tiny_target):
    """Regression: the LM head behind graphs and padding took one hidden vector [H] for H rows and
    returned only the first H logits, so the prefill's first token was chosen among the first
    `hidden_size` tokens of the vocabulary, wherever the target ran padded or through graphs."""
    graphed = GraphedTarget(tiny_target, buckets=(1, 4), capture=False)
    vector = torch.randn(tiny_target.shape.hidden_size)
    assert graphed.logits(vector).shape == (tiny_target.shape.vocab_size,)
    torch.testing.assert_close(graphed.logits(vector), tiny_target.logits(vector))
    late = [p for p in ([0, t, 3 * t % 90 + 2] for t in range(2, 80)) if greedy(tiny_target, p, 1)[0] >= 64]
    assert len(late) >= 3  # prompts whose first token lies beyond the first hidden_size (64) tokens
    for graphs, rows in ((True, None), (False, 4)):  # CUDA's graph path (eager here), and padded rows
        gen = SpeculativeGenerator(tiny_target, graphs=graphs, pad_rows=rows)
        for prompt in late[:3]:
            out = gen.generate(prompt, GenerationConfig(max_new_tokens=8)).tokens
            assert out == greedy(tiny_target, prompt, 8)


def test_a_tree_mask_over_drafted_slots_leaves_the_context_visible():
    """A drafting level's rows see the committed context and their tree over the last w slots (drafted
    ancestors still in the cache, then the new rows): the eager mask and the static buffer agree."""
    tree = torch.tensor([[[1, 0, 1, 0], [0, 1, 0, 1]], [[0, 1, 1, 0], [1, 0, 0, 1]]], dtype=torch.bool)
    eager = attention_mask(2, 5, tree.unsqueeze(1))  # 5 cached (3 committed, 2 drafted), 2 new
    assert eager.shape == (2, 1, 2, 7) and eager[..., :3].all()
    assert torch.equal(eager[:, 0, :, 3:], tree)
    static = torch.ones(2, 1, 4, 12, dtype=torch.bool)  # bucket 4, capacity 12: stale values cleared
    fill_mask(static, tree.unsqueeze(1), start=5, n=2)
    assert torch.equal(static[..., :2, :7], eager) and not static[..., :2, 7:].any()
    assert static[..., 2:, 0].all() and not static[..., 2:, 1:].any()  # padding rows see slot 0 only


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


@pytest.mark.parametrize("members", [1, 2])
def test_static_drafting_path_drafts_the_same_trees(tiny_target, members, monkeypatch):
    """TreeDrafter through GraphedDrafter (eagerly here) against the plain drafter forward: the same
    trees, step after step, from a prompt longer than every bucket, alone and as a stack of two. On
    exact kernels: INT8 (float32 drafters where bf16 is not native) quantizes each call's activations
    with one scale across rows, so a bucket's padding rows would shift the scores a little."""
    monkeypatch.setattr("taps.models.drafter.drafting_kernel", lambda dtype: None)  # plain F.linear
    drafters = [random_drafter(tiny_target, seed=s) for s in range(members)]
    shape = TreeShape(4, 4, 12)
    plain = TreeDrafter(drafters, shape, list(range(members)), graphs=False)
    static = TreeDrafter(drafters, shape, list(range(members)), graphs=True)
    assert isinstance(static.forward, GraphedDrafter) and not isinstance(plain.forward, GraphedDrafter)
    tokens = torch.randint(0, 90, (100,), generator=torch.Generator().manual_seed(0))
    features = tiny_target(tokens, tiny_target.new_cache(128))
    cuts = [70, 73, 74, 78, 84, 85, 100]  # the first ingest (70 pairs) runs unbucketed
    for start, end in zip([0, *cuts], cuts):
        trees = [d.propose_all(tokens[:end], features[start:end]) for d in (plain, static)]
        for a, b in zip(*trees):
            assert a.tokens.tolist() == b.tokens.tolist() and a.parents.tolist() == b.parents.tolist()
            torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=1e-4)


def test_static_drafter_cache_grows_and_keeps_what_it_holds(tiny_target):
    stacked = stack_drafters([random_drafter(tiny_target, seed=1)])
    graphed = GraphedDrafter(stacked, buckets=(1, 4), capture=False)
    cache = graphed.new_cache(8)
    hidden = stacked.config.shape.hidden_size
    tokens = torch.arange(30)[None]
    feats = torch.randn(1, 30, hidden)
    first = graphed(tokens[:, :6], feats[:, :6], torch.arange(6), cache)
    grown = graphed(tokens[:, 6:30], feats[:, 6:30], torch.arange(6, 30), cache)  # outgrows 8 slots
    assert graphed.cache is cache and cache.length == 30 and graphed.capacity >= 30
    reference = stacked(tokens, feats, torch.arange(30), stacked.new_cache(64))
    torch.testing.assert_close(torch.cat([first, grown], 1), reference, atol=1e-4, rtol=1e-4)


class _RecordedGraph:
    """A stand-in for torch.cuda.CUDAGraph on the CPU: replay reruns the recorded call into its output."""

    def __init__(self, run):
        self.run, self.output = run, run()

    def replay(self):
        self.output.copy_(self.run())


@pytest.mark.parametrize("kind", ["target", "drafter"])
def test_a_bucket_first_call_returns_its_own_result(tiny_target, monkeypatch, kind):
    """The call that records a bucket's graph must replay it on that call's own inputs (the recording
    once ran on all-padding inputs instead, so a bucket's first output was wrong)."""
    import taps.models.graphs as graphs

    def fake_capture(run, device, pool):
        graph = _RecordedGraph(run)
        return graph, graph.output

    monkeypatch.setattr(graphs, "capture", fake_capture)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    tokens = torch.tensor([0, 5, 17, 23, 5, 17, 9, 3, 44, 12, 80])
    if kind == "target":
        recorded, eager = (GraphedTarget(tiny_target, (1, 4), capture=c) for c in (True, False))
        outs = []
        for graphed in (recorded, eager):
            cache = graphed.new_cache(64)
            outs.append(torch.cat([graphed(tokens[:2], cache).clone(), graphed(tokens[2:3], cache).clone()]))
    else:
        stacked = stack_drafters([random_drafter(tiny_target, seed=1)])
        feats = torch.randn(1, 3, stacked.config.shape.hidden_size)
        outs = []
        for graphed in (GraphedDrafter(stacked, (1, 4), capture=c) for c in (True, False)):
            cache = graphed.new_cache(64)
            first = graphed(tokens[None, :2], feats[:, :2], torch.arange(2), cache)
            outs.append(
                torch.cat([first, graphed(tokens[None, 2:3], feats[:, 2:3], torch.arange(2, 3), cache)], 1)
            )
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
