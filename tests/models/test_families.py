"""The families beyond llama/qwen2: mistral (llama's layers, maybe a sliding window) and qwen3 (a norm
per query and key head, an explicit head_dim). The plain forward and greedy decoding of every family
are checked against `transformers` in test_target.py and test_lossless.py; here the packed CPU path,
drafters with per-head norms (alone and stacked), and the sliding-window cap."""

from __future__ import annotations

import pytest
import torch

from taps.models.layers import ModelShape
from taps.models.target import TargetModel
from taps.spec.combine import Committee, MergedProposer
from taps.spec.generate import GenerationConfig, SpeculativeGenerator
from taps.spec.propose import DrafterProposer, TreeShape
from tests.conftest import random_drafter, tiny_hf_model
from tests.spec.test_lossless import PROMPTS, greedy

NEW_FAMILIES = ["mistral", "qwen3"]


@pytest.fixture(scope="module", params=NEW_FAMILIES)
def packed_target(request, tiny_dirs) -> tuple[str, TargetModel]:
    return request.param, TargetModel.from_dir(tiny_dirs[request.param], dtype=torch.float32).pack_for_cpu()


def head_normed_drafter(target: TargetModel, seed: int):
    """A random drafter whose per-head norms (qwen3) are random too, so members differ there."""
    drafter = random_drafter(target, seed=seed, draft_vocab=40)
    gen = torch.Generator().manual_seed(seed)
    for layer in drafter.layers:
        for norm in (layer.self_attn.q_norm, layer.self_attn.k_norm):
            if norm is not None:
                norm.weight.copy_(torch.rand(norm.weight.shape, generator=gen) + 0.5)
    return drafter


def test_packed_forward_matches_transformers(packed_target):
    family, target = packed_target
    assert target.packed
    hf = tiny_hf_model(family)
    ids = torch.randint(0, 96, (13,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(ids[None]).logits[0]
    cache = target.new_cache()
    got = target.logits(torch.cat([target(ids[:6], cache), target(ids[6:], cache)]))
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_drafters_alone_and_merged_are_lossless(packed_target):
    _, target = packed_target
    shape = TreeShape(3, 4, 12)
    lone = DrafterProposer(head_normed_drafter(target, 1), shape)
    merged = MergedProposer(
        [DrafterProposer(head_normed_drafter(target, s), shape, source=i) for i, s in enumerate([1, 2])]
    )
    for proposer in (lone, merged):
        gen = SpeculativeGenerator(target, proposer)
        for prompt in PROMPTS:
            assert gen.generate(prompt, GenerationConfig(max_new_tokens=30)).tokens == greedy(
                target, prompt, 30
            )


def test_the_static_path_behind_cuda_graphs_is_lossless_with_head_norms(tiny_dirs):
    """The GPU engine's static cache and padded forwards (run eagerly here) through a qwen3 target."""
    from taps.models.graphs import GraphedTarget

    target = TargetModel.from_dir(tiny_dirs["qwen3"], dtype=torch.float32)
    gen = SpeculativeGenerator(
        target, DrafterProposer(head_normed_drafter(target, 5), TreeShape(8, 5, 24)), graphs=True
    )
    assert isinstance(gen.target, GraphedTarget)
    for prompt in PROMPTS:
        assert gen.generate(prompt, GenerationConfig(max_new_tokens=30)).tokens == greedy(target, prompt, 30)


def test_stacked_members_with_head_norms_draft_their_own_trees(tiny_dirs):
    """Stacking gives each member's per-head norm its own weights ([N, 1, 1, head_dim])."""
    target = TargetModel.from_dir(tiny_dirs["qwen3"], dtype=torch.float32)
    shape = TreeShape(3, 3, 8)
    members = [DrafterProposer(head_normed_drafter(target, s), shape, source=i) for i, s in enumerate([3, 4])]
    committee = Committee(members)
    assert len(committee.groups) == 1  # both stacked
    prompt = torch.tensor(PROMPTS[2])
    features = target(prompt, target.new_cache())
    for proposer in members:
        proposer.reset()
    committee.reset()
    together = committee.propose(prompt, features)
    alone = [proposer.propose(prompt, features) for proposer in members]
    assert [t.tokens.tolist() for t in together] == [t.tokens.tolist() for t in alone]
    assert together[0].tokens.tolist() != together[1].tokens.tolist()  # the members do differ


def test_a_sliding_window_caps_the_context_where_it_is_in_use():
    base = dict(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=4096,
    )  # fmt: skip
    assert (
        ModelShape.from_hf_config(
            base | {"model_type": "mistral", "sliding_window": 64}
        ).max_position_embeddings
        == 64
    )
    assert (
        ModelShape.from_hf_config(
            base | {"model_type": "mistral", "sliding_window": None}
        ).max_position_embeddings
        == 4096
    )
    unused = base | {"model_type": "qwen2", "sliding_window": 64, "use_sliding_window": False}
    assert ModelShape.from_hf_config(unused).max_position_embeddings == 4096
    per_layer = base | {
        "model_type": "qwen3",
        "sliding_window": 64,
        "layer_types": ["full_attention", "sliding_attention"],
    }
    assert ModelShape.from_hf_config(per_layer).max_position_embeddings == 64


def test_a_drafter_for_a_head_normed_target_trains_and_loads(tiny_dirs, tmp_path):
    """HASS online on a qwen3 target: the drafter's per-head norms learn and come back on load."""
    import json
    from types import SimpleNamespace

    from taps.models.checkpoint import load_drafter
    from taps.training.features import token_sequences
    from taps.training.trainer import TrainConfig, train
    from tests.training.test_training import CharTokenizer, conversations

    model = TargetModel.from_dir(tiny_dirs["qwen3"], dtype=torch.float32)
    target = SimpleNamespace(model=model, tokenizer=CharTokenizer(), eos_token_ids=(1,), name="tiny-qwen3")
    seqs = token_sequences(target.tokenizer, conversations(24), max_tokens=10**6)
    cfg = TrainConfig(
        method="hass", epochs=8, batch_tokens=400, lr=3e-3, warmup_steps=3, draft_vocab_size=40,
        align_steps=2, checkpoint_every=1000,
    )  # fmt: skip
    out = train(target, seqs, tmp_path / "hass", cfg)
    log = json.loads((tmp_path / ".hass.train" / "log.json").read_text())
    assert sum(r["loss"] for r in log[-3:]) < 0.85 * sum(r["loss"] for r in log[:3])
    drafter = load_drafter(out, model, dtype=torch.float32)
    q_norm = drafter.layers[0].self_attn.q_norm
    assert q_norm is not None and not torch.equal(q_norm.weight, torch.ones_like(q_norm.weight))
