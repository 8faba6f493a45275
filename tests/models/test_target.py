import pytest
import torch

from taps.errors import TapsError
from taps.models.target import TargetModel
from tests.conftest import FAMILIES, tiny_hf_model


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_matches_transformers(family, tiny_dirs):
    hf = tiny_hf_model(family)
    ours = TargetModel.from_dir(tiny_dirs[family], dtype=torch.float32)
    ids = torch.randint(0, 96, (17,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids[None]).logits[0]
    cache = ours.new_cache(capacity=4)  # forces the cache to grow
    got = ours.logits(torch.cat([ours(ids[:9], cache), ours(ids[9:], cache)]))
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert cache.length == 17


def test_tree_pass_equals_sequential_passes(tiny_target):
    """A branch verified inside a tree gets the same logits as decoding it token by token."""
    ctx = torch.tensor([5, 9, 2, 7])
    cache = tiny_target.new_cache()
    tiny_target(ctx, cache)
    # root 3 with two branches: [3 -> 4 -> 6] and [3 -> 8]
    tokens = torch.tensor([3, 4, 8, 6])
    parents = [-1, 0, 0, 1]
    mask = torch.zeros(4, 4, dtype=torch.bool)
    depth = [0, 1, 1, 2]
    for i, p in enumerate(parents):
        if p >= 0:
            mask[i] = mask[p]
        mask[i, i] = True
    tree_logits = tiny_target.logits(tiny_target(tokens, cache, torch.tensor(depth) + 4, mask))
    for path in ([0, 1, 3], [0, 2]):
        c2 = tiny_target.new_cache()
        seq = torch.cat([ctx, tokens[path]])
        ref = tiny_target.logits(tiny_target(seq, c2))[4:]
        torch.testing.assert_close(tree_logits[path], ref, atol=1e-5, rtol=1e-5)


def test_cache_compaction_keeps_accepted_path(tiny_target):
    ctx = torch.tensor([5, 9, 2, 7])
    cache = tiny_target.new_cache()
    tiny_target(ctx, cache)
    tokens, mask = (
        torch.tensor([3, 4, 8, 6]),
        torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]], dtype=torch.bool),
    )
    tiny_target(tokens, cache, torch.tensor([4, 5, 5, 6]), mask)
    cache.compact(4, [4, 5, 7])  # keep root, node 4, node 6
    assert cache.length == 7
    nxt = tiny_target.logits(tiny_target(torch.tensor([11]), cache))
    ref_cache = tiny_target.new_cache()
    ref = tiny_target.logits(tiny_target(torch.tensor([5, 9, 2, 7, 3, 4, 6, 11]), ref_cache))[-1:]
    torch.testing.assert_close(nxt, ref, atol=1e-5, rtol=1e-5)


def test_bad_model_dirs(tmp_path):
    with pytest.raises(TapsError, match="config.json"):
        TargetModel.from_dir(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(TapsError, match="not supported"):
        TargetModel.from_dir(tmp_path)
