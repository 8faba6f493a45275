"""Packed CPU kernels compute what the plain layers compute (int8 to quantization error), save nothing new."""

import pytest
import torch

import taps.device
from taps.errors import TapsError
from taps.models import packed
from taps.models.packed import INT8, ONEDNN, PackedLinear, PackedMatmul, PackedMembers, drafting_kernel
from taps.models.stacked import stack_drafters
from taps.models.target import TargetModel
from tests.conftest import random_drafter


def _require(kernel):
    if not kernel.available:
        pytest.skip(f"this torch build has no {kernel.name} kernel")


def test_packed_target_matches_plain_forward(tiny_dirs):
    _require(ONEDNN)
    plain = TargetModel.from_dir(tiny_dirs["qwen2"], dtype=torch.float32)
    model = TargetModel.from_dir(tiny_dirs["qwen2"], dtype=torch.float32).pack_for_cpu()
    assert isinstance(model.lm_head, PackedLinear) and isinstance(
        model.model.layers[0].mlp.up_proj, PackedLinear
    )
    layer = model.model.layers[0]  # q/k/v and gate/up run fused, their own packings freed
    assert layer.self_attn.qkv is not None and layer.mlp.gate_up is not None
    assert layer.self_attn.q_proj.packed is None and layer.mlp.up_proj.packed is None
    assert model.state_dict().keys() == plain.state_dict().keys()
    tokens = torch.tensor([0, 5, 17, 23, 5, 17, 9])
    tree = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    outs = []
    for m in (plain, model):
        cache = m.new_cache()
        m(tokens[:4], cache)
        outs.append(m.logits(m(tokens[4:], cache, torch.tensor([4, 5, 5]), tree)))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("shape", [(576, 576), (1536, 576), (576, 1536), (960, 576), (3072, 576)])
def test_packed_rows_are_bit_identical_whatever_the_row_count(shape, dtype):
    """(The default target's projections; the last two are its fused q/k/v and gate/up.)
    Float32 losslessness rests on this: a row's result must not depend on how many rows share the
    matmul (1 in plain decoding, a tree's node count in verification). MKL's F.linear breaks it, and so
    does a oneDNN weight packed with a 1-row hint; oneDNN itself computes a lone row apart on some CPUs
    (a Zen 4 EPYC, 1536 inputs), which the packed layers detect and route around. A torch upgrade that
    changed the kernel would show here."""
    _require(ONEDNN)
    if not ONEDNN.runs(dtype):
        pytest.skip(f"oneDNN has no {dtype} path on this CPU")
    weight, x = (torch.randn(*shape) * 0.02).to(dtype), torch.randn(16, shape[1]).to(dtype)
    linear = torch.nn.Linear(shape[1], shape[0], bias=False, dtype=dtype)
    linear.weight.data.copy_(weight)
    layer, fused = PackedLinear(linear, ONEDNN, exact=True), PackedMatmul.of(weight, ONEDNN, exact=True)
    raw = ONEDNN.matmul(x, layer.packed, None)
    apart = not torch.equal(ONEDNN.matmul(x[:1], layer.packed, None), raw[:1])
    assert layer.rows == fused.rows and (layer.rows.floor == 2) == apart
    for run in (layer, fused):
        full = run(x)
        for rows in (1, 2, 3, 5, 8, 13):
            assert torch.equal(run(x[:rows]), full[:rows]), rows
        assert torch.equal(run(x[:1].view(1, 1, -1)), full[:1].view(1, 1, -1))  # [batch, tokens, in] too
    wide = torch.randn(packed.PROBE_ROWS, shape[1]).to(dtype)  # past where a kernel may change path (AMX: 33)
    together = layer(wide)
    assert all(torch.equal(layer(wide[i : i + 1]), together[i : i + 1]) for i in range(len(wide)))


def test_a_row_floor_pads_small_matmuls_and_changes_no_bits(tiny_dirs):
    """`TargetModel.set_row_floor`: 1-3 rows run as 4 in every packed matmul (layers, fused q/k/v and
    gate/up, the LM head), attention still on the real rows: the hidden states and logits are the
    unpadded ones bit for bit."""
    _require(ONEDNN)
    model = TargetModel.from_dir(tiny_dirs["qwen2"], dtype=torch.float32).pack_for_cpu()
    assert model.packed and model.row_floor == 1
    tokens = torch.tensor([3, 9, 27, 81, 41, 11, 33])
    tree = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)

    def run():
        cache = model.new_cache()
        model(tokens[:4], cache)
        one = model(tokens[4:5], cache)
        return one, model.logits(one), model.logits(model(tokens[4:], cache, torch.tensor([5, 6, 6]), tree))

    before = run()
    seen = []  # the row count of every packed matmul, through a spy kernel
    spy = packed.Kernel(
        "spy", ONEDNN.pack, lambda x, w, b: seen.append(x.numel() // x.shape[-1]) or ONEDNN.matmul(x, w, b)
    )
    for p in (m for m in model.modules() if isinstance(m, PackedLinear)):
        p.kernel = spy
    for layer in model.model.layers:
        layer.self_attn.qkv.kernel = layer.mlp.gate_up.kernel = spy
    model.set_row_floor(4)
    after = run()
    assert min(seen) == 4 and model.row_floor == 4
    for a, b in zip(before, after):
        assert torch.equal(a, b)
    with pytest.raises(TapsError, match="row floor"):
        model.set_row_floor(0)


def test_a_lone_row_runs_as_two_where_the_kernel_computes_it_apart():
    _require(ONEDNN)
    weight, x = torch.randn(8, 1536) * 0.02, torch.randn(1, 1536)
    packed_weight = ONEDNN.pack(weight)
    two = ONEDNN.matmul(x.repeat(2, 1), packed_weight, None)[:1]
    assert torch.equal(packed.matmul_rows(ONEDNN, x, packed_weight, None, packed.RowRange(2)), two)
    alone = ONEDNN.matmul(x, packed_weight, None)
    assert torch.equal(packed.matmul_rows(ONEDNN, x, packed_weight, None), alone)
    assert packed.exact_row_range(INT8, 1536, 8, torch.float32) == packed.ANY_ROWS  # int8: never exact


def _switching_kernel(lone_apart: bool, above: int) -> packed.Kernel:
    """A kernel exact row by row, except where a real one may change path: a lone row (if
    `lone_apart`) and products of more than `above` rows come out 1e-3 apart."""

    def matmul(x, w, b):
        flat = x.reshape(-1, x.shape[-1])
        out = torch.stack([w @ row for row in flat])  # row by row: a row's bits never depend on the others
        if len(flat) > above or (lone_apart and len(flat) == 1):
            out = out + 1e-3
        return out.reshape(*x.shape[:-1], -1)

    return packed.Kernel(f"switching-{lone_apart}-{above}", lambda w: w.detach().clone(), matmul)


def test_exact_row_range_finds_where_a_kernel_changes_path_and_chunks_past_it():
    """AMX's bf16 oneDNN products of 33+ rows round apart from 1-32 rows (an Intel Xeon, family 6
    model 207), Zen 4's lone rows apart from 2-64: the probe finds both, and an exact packed layer
    then gives every row of a wide product the bits it gets in a plain step, in chunks, except inside
    `whole_matmuls` (a prefill), where it runs the product at once."""
    kernel = _switching_kernel(lone_apart=False, above=5)
    probe = packed.exact_row_range
    assert probe(kernel, 8, 6, torch.float32) == packed.RowRange(1, 5)
    assert probe(_switching_kernel(True, 5), 8, 6, torch.float32) == packed.RowRange(2, 5)
    assert probe(_switching_kernel(True, 99), 8, 6, torch.float32) == packed.RowRange(2, packed.PROBE_ROWS)
    linear = torch.nn.Linear(8, 6, bias=False)
    layer, loose = PackedLinear(linear, kernel, exact=True), PackedLinear(linear, kernel)
    assert loose.rows == packed.ANY_ROWS  # a drafter's layer is not probed
    x = torch.randn(13, 8)
    steps = torch.cat([layer(row[None]) for row in x])
    assert torch.equal(layer(x), steps)  # 5 + 5 + 3 rows
    assert not torch.equal(loose(x), steps)
    with packed.whole_matmuls():
        assert torch.equal(layer(x), loose(x))
    fused = PackedMatmul.of(linear.weight, kernel, exact=True)
    assert fused.rows == layer.rows and torch.equal(fused(x), steps)


def spy_on_rows(model: TargetModel, rows: packed.RowRange) -> list[int]:
    """Make every packed matmul of `model` exact within `rows` and record the row count of each
    product it runs (through a spy kernel); returns the record."""
    seen: list[int] = []
    spy = packed.Kernel(
        "spy", ONEDNN.pack, lambda x, w, b: seen.append(x.numel() // x.shape[-1]) or ONEDNN.matmul(x, w, b)
    )
    matmuls = [m for m in model.modules() if isinstance(m, PackedLinear)]
    matmuls += [p for layer in model.model.layers for p in (layer.self_attn.qkv, layer.mlp.gate_up)]
    for m in matmuls:
        m.kernel, m.rows = spy, rows
    return seen


def test_the_target_verifies_in_exact_chunks_and_reads_prompts_whole(tiny_dirs):
    _require(ONEDNN)
    model = TargetModel.from_dir(tiny_dirs["qwen2"], dtype=torch.float32).pack_for_cpu()
    before = []
    for run in range(2):
        cache = model.new_cache()
        prompt = model(torch.arange(3, 12), cache)
        tree = torch.ones(5, 5, dtype=torch.bool).tril()
        before.append((prompt, model.logits(model(torch.arange(20, 25), cache, torch.arange(9, 14), tree))))
        if run == 0:
            seen = spy_on_rows(model, packed.RowRange(1, 2))
    assert seen and max(seen[: len(seen) // 2]) == 9  # the prompt: 9 rows at once
    assert max(seen[len(seen) // 2 :]) == 2  # the tree: 5 rows as 2 + 2 + 1 (logits too)
    for a, b in zip(*before):
        assert torch.equal(a, b)


def test_a_padded_target_reads_a_long_prompt_whole(tiny_dirs):
    """`--pad-rows` on a CPU: a prompt longer than the bucket runs eagerly, its matmuls whole."""
    from taps.models.graphs import GraphedTarget

    _require(ONEDNN)
    model = TargetModel.from_dir(tiny_dirs["llama"], dtype=torch.float32).pack_for_cpu()
    padded = GraphedTarget(model, buckets=(8,), capture=False)
    seen = spy_on_rows(model, packed.RowRange(1, 2))
    padded(torch.arange(3, 23), padded.new_cache(64))
    assert seen and min(seen) == 20


@pytest.mark.parametrize("kernel", [ONEDNN, INT8], ids=lambda k: k.name)
def test_packed_stacked_drafters_match_plain_ones(tiny_target, kernel):
    _require(kernel)
    drafters = [random_drafter(tiny_target, seed=s, draft_vocab=40) for s in (1, 2)]
    plain, fast = stack_drafters(drafters), stack_drafters(drafters).pack_for_cpu(kernel)
    assert isinstance(fast.fc, PackedMembers) and fast.packed_head is not None
    tokens, features = torch.tensor([[3, 4, 5]] * 2), torch.randn(2, 3, tiny_target.shape.hidden_size)
    outs = []
    for model in (plain, fast):
        hidden = model(tokens, features, torch.arange(3), model.new_cache())
        outs.append(model.draft_logits(hidden))
    if kernel is ONEDNN:
        torch.testing.assert_close(outs[1], outs[0], atol=1e-4, rtol=1e-4)
    else:  # int8 weights and activations: close, not equal (these random drafters have large weights)
        assert float((outs[1] - outs[0]).norm() / outs[0].norm()) < 0.1
        assert (outs[1].argmax(-1) == outs[0].argmax(-1)).float().mean() >= 2 / 3


def test_drafters_use_int8_only_where_bf16_is_not_native(monkeypatch):
    _require(INT8)
    monkeypatch.setattr(taps.device, "cpu_flags", lambda: {"avx2"})
    assert drafting_kernel(torch.float32) is INT8
    monkeypatch.setattr(taps.device, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    for dtype in (torch.float32, torch.bfloat16):  # oneDNN's bf16 needs AVX-512 (the real CPU's)
        assert drafting_kernel(dtype) is (ONEDNN if ONEDNN.runs(dtype) else None)


def test_packing_is_a_no_op_where_unavailable(tiny_dirs, monkeypatch):
    monkeypatch.setattr(packed, "_runs", lambda kernel, dtype: False)
    model = TargetModel.from_dir(tiny_dirs["llama"], dtype=torch.float32).pack_for_cpu()
    assert type(model.lm_head) is torch.nn.Linear


def test_bf16_models_stay_unpacked_where_onednn_has_no_bf16_path(tiny_dirs, monkeypatch):
    """An AVX2-only CPU: oneDNN packs float32 weights but refuses bf16 ones (it needs AVX-512)."""
    monkeypatch.setattr(packed, "_runs", lambda kernel, dtype: dtype == torch.float32)
    bf16 = TargetModel.from_dir(tiny_dirs["llama"], dtype=torch.bfloat16).pack_for_cpu()
    assert type(bf16.lm_head) is torch.nn.Linear
    assert packed.drafting_kernel(torch.bfloat16) is None
    if packed.ONEDNN.available:
        f32 = TargetModel.from_dir(tiny_dirs["llama"], dtype=torch.float32).pack_for_cpu()
        assert isinstance(f32.lm_head, packed.PackedLinear)


def test_int8_drafters_keep_their_first_layer_exact(tiny_target):
    """fc reads [token embedding | target feature]; on the default target the feature half runs ~40x
    larger (channels up to 35, embeddings up to 0.83). One int8 scale per call then flattens the
    embedding half's contribution; fc stays on exact oneDNN while the rest drafts in int8."""
    _require(INT8)
    _require(ONEDNN)
    drafter = random_drafter(tiny_target, seed=1).pack_for_cpu(INT8)
    assert drafter.fc.kernel is ONEDNN and drafter.layers[0].mlp.down_proj.kernel is INT8
    hidden = tiny_target.shape.hidden_size
    linear = torch.nn.Linear(2 * hidden, hidden, bias=False)
    embedding = 0.05 * torch.randn(8, hidden, generator=torch.Generator().manual_seed(0))
    feature = torch.randn(8, hidden, generator=torch.Generator().manual_seed(1))
    feature[:, 3] = 35.0  # an outlier channel, as the real target's
    zeros = torch.zeros_like(embedding)
    with torch.no_grad():
        exact = linear(torch.cat([embedding, feature], -1)) - linear(torch.cat([zeros, feature], -1))
        for kernel, limit in ((ONEDNN, 1e-4), (INT8, None)):
            fast = PackedLinear(linear, kernel)
            part = fast(torch.cat([embedding, feature], -1)) - fast(torch.cat([zeros, feature], -1))
            error = float((part - exact).norm() / exact.norm())  # the embedding half's contribution
            assert error < limit if limit else error > 0.3, (kernel.name, error)


def test_int8_drafting_is_lossless(tiny_target, monkeypatch):
    """Where bf16 is not native, float32 drafters draft on int8 weights: the target still decides."""
    from taps.spec.generate import GenerationConfig, SpeculativeGenerator
    from taps.spec.propose import DrafterProposer, TreeShape
    from tests.spec.test_lossless import PROMPTS, greedy

    _require(INT8)
    monkeypatch.setattr(taps.device, "cpu_flags", lambda: {"avx2"})
    proposer = DrafterProposer(random_drafter(tiny_target, seed=3), TreeShape(4, 4, 12))
    assert proposer.trees.model.layers[0].mlp.down_proj.kernel is INT8
    gen = SpeculativeGenerator(tiny_target, proposer)
    for prompt in PROMPTS:
        assert gen.generate(prompt, GenerationConfig(max_new_tokens=40)).tokens == greedy(tiny_target, prompt)


def test_fusing_needs_parts_packed_alike():
    """Only packed linears of one kind and kernel fuse; anything else keeps its own matmuls."""
    _require(ONEDNN)
    linear = torch.nn.Linear(8, 4)
    assert packed.fuse([linear, linear]) is None
    assert packed.fuse([PackedLinear(linear), PackedLinear(torch.nn.Linear(8, 4, bias=False))]) is None
    parts = [PackedLinear(torch.nn.Linear(8, 4)), PackedLinear(torch.nn.Linear(8, 6))]
    x = torch.randn(3, 8)
    expected = torch.cat([p(x) for p in parts], -1)
    fused = packed.fuse(parts)
    torch.testing.assert_close(fused(x), expected, atol=1e-6, rtol=1e-6)
    assert all(p.packed is None for p in parts)


def test_stacked_drafters_run_fused(tiny_target):
    """A stack of drafters fuses per member: the same scores as each drafter alone."""
    _require(ONEDNN)
    drafters = [random_drafter(tiny_target, seed=s) for s in (1, 2)]
    stacked = stack_drafters(drafters).pack_for_cpu(ONEDNN)
    assert stacked.layers[0].self_attn.qkv.stacked and stacked.layers[0].mlp.gate_up is not None
    tokens, features = torch.tensor([3, 7, 11]), torch.randn(3, tiny_target.shape.hidden_size)
    positions, tree = torch.arange(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    together = stacked(
        tokens.expand(2, -1),
        features.expand(2, -1, -1),
        positions,
        stacked.new_cache(),
        tree.expand(2, 1, 3, 3),
    )
    for i, drafter in enumerate(drafters):
        alone = drafter(tokens, features, positions, drafter.new_cache(), tree)
        torch.testing.assert_close(together[i], alone, atol=1e-4, rtol=1e-4)
