"""oneDNN-packed CPU inference computes what the plain layers compute, and saves nothing new."""

import pytest
import torch

from taps.models.packed import PackedLinear, PackedMembers, packing_available
from taps.models.stacked import stack_drafters
from taps.models.target import TargetModel
from tests.conftest import random_drafter

pytestmark = pytest.mark.skipif(
    not packing_available(), reason="this torch build has no oneDNN packed linear"
)


def test_packed_target_matches_plain_forward(tiny_dirs):
    plain = TargetModel.from_dir(tiny_dirs["qwen2"], dtype=torch.float32)
    packed = TargetModel.from_dir(tiny_dirs["qwen2"], dtype=torch.float32).pack_for_cpu()
    assert isinstance(packed.lm_head, PackedLinear) and isinstance(
        packed.model.layers[0].mlp.up_proj, PackedLinear
    )
    assert packed.state_dict().keys() == plain.state_dict().keys()
    tokens = torch.tensor([0, 5, 17, 23, 5, 17, 9])
    tree = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    for model in (plain, packed):
        cache = model.new_cache()
        model(tokens[:4], cache)
        model.outputs = model.logits(model(tokens[4:], cache, torch.tensor([4, 5, 5]), tree))
    torch.testing.assert_close(packed.outputs, plain.outputs, atol=1e-4, rtol=1e-4)


def test_packed_stacked_drafters_match_plain_ones(tiny_target):
    drafters = [random_drafter(tiny_target, seed=s, draft_vocab=40) for s in (1, 2)]
    plain, packed = stack_drafters(drafters), stack_drafters(drafters).pack_for_cpu()
    assert isinstance(packed.fc, PackedMembers) and packed.packed_head is not None
    tokens, features = torch.tensor([[3, 4, 5]] * 2), torch.randn(2, 3, tiny_target.shape.hidden_size)
    outs = []
    for model in (plain, packed):
        hidden = model(tokens, features, torch.arange(3), model.new_cache())
        outs.append(model.draft_logits(hidden))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-4, rtol=1e-4)


def test_packing_is_a_no_op_where_unavailable(tiny_dirs, monkeypatch):
    import taps.models.packed as packed

    monkeypatch.setattr(packed, "packing_available", lambda: False)
    model = TargetModel.from_dir(tiny_dirs["llama"], dtype=torch.float32).pack_for_cpu()
    assert type(model.lm_head) is torch.nn.Linear
