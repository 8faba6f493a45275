"""bf16 exactness: attention in a wider dtype, and forwards padded to one row count (`taps.models.padded`)."""

from types import SimpleNamespace

import pytest
import torch

from taps.models.graphs import GraphedTarget, accelerated
from taps.models.padded import attention_dtype, cap_tree, default_rows, invariant_rows, padded_logits
from taps.models.target import TargetModel
from taps.spec.costs import curve_key
from taps.spec.generate import GenerationConfig, SpeculativeGenerator
from taps.spec.ngram import NgramProposer
from taps.spec.propose import DrafterProposer, TreeShape
from tests.conftest import random_drafter
from tests.spec.test_lossless import PROMPTS


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def bf16_target(request, tiny_dirs) -> TargetModel:
    model = TargetModel.from_dir(tiny_dirs[request.param], dtype=torch.bfloat16)
    model.pad_rows = 8  # as `--pad-rows 8`
    return model


def test_rows_by_dtype_device_and_override(tiny_target, bf16_target):
    assert default_rows(tiny_target) == 0 and invariant_rows(tiny_target) == 0
    assert default_rows(bf16_target) == 0 and invariant_rows(bf16_target) == 8  # on a CPU: opt-in
    cuda_bf16 = SimpleNamespace(dtype=torch.bfloat16, device=torch.device("cuda", 0))
    assert default_rows(cuda_bf16) == 64
    assert default_rows(SimpleNamespace(dtype=torch.float32, device=torch.device("cuda", 0))) == 0
    assert cap_tree(24, 8) == 7 and cap_tree(5, 8) == 5 and cap_tree(24, 0) == 24
    assert accelerated(tiny_target) is tiny_target  # float32: exact already, nothing padded
    padded = accelerated(bf16_target)
    assert isinstance(padded, GraphedTarget) and padded.buckets == (8,) and padded.exact_rows == 8
    assert accelerated(bf16_target) is padded  # made once per model
    assert accelerated(bf16_target, rows=0) is bf16_target
    assert curve_key(padded)["forward"] != curve_key(bf16_target)["forward"]


def test_bf16_attends_wider_than_its_weights(bf16_target, tiny_target):
    """A bf16 target keeps its KV cache, and attends, in float64 on a CPU, padded or not, and in
    float32 on CUDA where padded (see `taps.models.padded`), and still hands bf16 hidden states on;
    float32 targets keep their own dtype, so that their cost curves stay cached under the same key,
    and a bf16 one's curve is not taken for one measured attending in bf16."""
    assert bf16_target.attention_dtype == torch.float64
    assert bf16_target.new_cache(32).keys[0].dtype == torch.float64
    assert "attention torch.float64" in curve_key(bf16_target)["forward"]
    padded = accelerated(bf16_target)
    cache = padded.new_cache(32)
    assert padded.attention_dtype == torch.float64 and cache.keys[0].dtype == torch.float64
    hidden = padded(torch.tensor([1, 2, 3]), cache)
    assert hidden.dtype == torch.bfloat16 and cache.length == 3
    narrow = GraphedTarget(bf16_target, buckets=(8,), wide_attention=False)
    assert narrow.new_cache(32).keys[0].dtype == torch.bfloat16
    assert curve_key(narrow)["forward"] != curve_key(padded)["forward"]
    assert GraphedTarget(bf16_target).attention_dtype == torch.float64  # many buckets: on a CPU too
    assert (
        GraphedTarget(bf16_target, wide_attention=torch.float32).new_cache(8).keys[0].dtype == torch.float32
    )
    cuda = SimpleNamespace(dtype=torch.bfloat16, device=torch.device("cuda", 0))
    assert attention_dtype(cuda, padded=True) == torch.float32 and attention_dtype(cuda) == torch.bfloat16
    single = GraphedTarget(tiny_target, buckets=(8,))
    assert single.attention_dtype == torch.float32 and "attention" not in curve_key(single)["forward"]
    assert tiny_target.new_cache(8).keys[0].dtype == torch.float32
    # the narrow cache's hidden states differ from the wide one's by bf16 rounding only
    other = narrow.new_cache(32)
    torch.testing.assert_close(narrow(torch.tensor([1, 2, 3]), other), hidden, atol=0.05, rtol=0.05)


def test_attention_model_keeps_bf16_attention(tiny_dirs):
    """`--attention model`: the speed of bf16 attention, for outputs that part from plain decoding more
    often; a bad value fails before any weights load."""
    from taps.errors import TapsError
    from taps.models.catalog import load_target

    model = TargetModel.from_dir(tiny_dirs["llama"], dtype=torch.bfloat16)
    model.attention = "model"
    assert model.new_cache(8).keys[0].dtype == torch.bfloat16
    assert accelerated(model, rows=8).attention_dtype == torch.bfloat16
    cuda = SimpleNamespace(dtype=torch.bfloat16, device=torch.device("cuda", 0), attention="model")
    assert attention_dtype(cuda, padded=True) == torch.bfloat16
    with pytest.raises(TapsError, match="--attention must be one of auto, model, float32, float64"):
        load_target("smollm2-135m", attention="fast")


@pytest.mark.parametrize("choice", ["float32", "float64"])
def test_attention_in_a_chosen_dtype_on_any_device(tiny_dirs, choice):
    """`--attention float32|float64`: that dtype for a bf16 target's cache and attention, on a CPU
    (whose default is float64) and on CUDA (float32 where padded, else bf16), so that a lent GPU can
    measure float64 beside its default; float32 and float64 models keep their own."""
    wanted = getattr(torch, choice)
    model = TargetModel.from_dir(tiny_dirs["llama"], dtype=torch.bfloat16)
    model.attention = choice
    assert model.new_cache(8).keys[0].dtype == wanted
    assert accelerated(model, rows=8).attention_dtype == wanted
    for padded in (False, True):
        cuda = SimpleNamespace(dtype=torch.bfloat16, device=torch.device("cuda", 0), attention=choice)
        assert attention_dtype(cuda, padded=padded) == wanted
    exact = SimpleNamespace(dtype=torch.float32, device=torch.device("cpu"), attention=choice)
    assert attention_dtype(exact) == torch.float32


def test_pad_rows_set_at_load_wins(tiny_dirs):
    model = TargetModel.from_dir(tiny_dirs["llama"], dtype=torch.bfloat16)
    assert invariant_rows(model) == 0 and accelerated(model) is model
    model.pad_rows = 16
    assert accelerated(model).buckets == (16,)


def test_padded_logits_are_the_real_rows_only(tiny_target):
    hidden = torch.randn(3, tiny_target.shape.hidden_size)
    logits = padded_logits(tiny_target, hidden, 8)
    assert logits.shape == (3, tiny_target.shape.vocab_size)
    torch.testing.assert_close(logits, tiny_target.logits(hidden), atol=1e-5, rtol=1e-5)
    assert padded_logits(tiny_target, torch.randn(9, tiny_target.shape.hidden_size), 8).shape[0] == 9


@pytest.mark.parametrize("proposer", ["ngram", "drafter"])
def test_bf16_speculative_output_equals_padded_plain_decoding(bf16_target, proposer):
    """In bf16, with every forward padded alike, verification rounds as plain steps do: equal outputs,
    and no tree larger than the padded rows allow (a fixed 24-node tree is cut to 7)."""
    make = {
        "ngram": lambda: NgramProposer(length=8, branches=2),
        "drafter": lambda: DrafterProposer(
            random_drafter(bf16_target, seed=3).to(torch.bfloat16).attach(bf16_target), TreeShape(8, 5, 24)
        ),
    }
    spec = SpeculativeGenerator(bf16_target, make[proposer]())
    plain = SpeculativeGenerator(bf16_target)
    assert spec.max_nodes == 7
    cfg = GenerationConfig(max_new_tokens=40)
    for prompt in PROMPTS:
        out = spec.generate(prompt, cfg)
        assert max(s.tree_size for s in out.steps) <= 7
        assert out.tokens == plain.generate(prompt, cfg).tokens


def test_a_prompt_attends_in_the_model_dtype_and_each_step_after_it_wider(tiny_dirs, monkeypatch):
    """Plain and speculative decoding share a prompt's prefill, so only the steps after it must round
    alike: the prompt attends in bf16 (float64 took 1.55x as long at 1000 tokens on a CPU), each later
    forward in float64, over the same cache."""
    from taps.models import layers

    model = TargetModel.from_dir(tiny_dirs["llama"], dtype=torch.bfloat16)
    seen = []
    real = layers._grouped_sdpa
    monkeypatch.setattr(
        layers, "_grouped_sdpa", lambda q, k, v, mask: seen.append(q.dtype) or real(q, k, v, mask)
    )
    cache = model.new_cache(16)
    model(torch.tensor([1, 2, 3, 4]), cache)
    prompt = set(seen)
    seen.clear()
    model(torch.tensor([5]), cache)
    model(torch.tensor([6, 7]), cache, torch.tensor([5, 6]), torch.ones(2, 2, dtype=torch.bool).tril())
    assert prompt == {torch.bfloat16} and set(seen) == {torch.float64}
    assert cache.keys[0].dtype == torch.float64 and cache.length == 7
