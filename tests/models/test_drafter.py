import pytest
import torch

from taps.models.drafter import Drafter, DrafterConfig


def _drafter(target, layers: int) -> Drafter:
    torch.manual_seed(layers)
    drafter = Drafter(DrafterConfig(shape=target.shape, num_layers=layers))
    for p in drafter.parameters():
        torch.nn.init.normal_(p, std=0.2) if p.dim() > 1 else None
    return drafter.float().requires_grad_(False).attach(target)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("cached", [0, 5])
@pytest.mark.parametrize("keep", [1, 3])
def test_reading_in_pairs_for_the_last_rows_keeps_every_key_and_value(tiny_target, layers, cached, keep):
    """`keep` (how a drafter reads in committed pairs: a prompt's, or a step's accepted ones) must put
    every pair's keys and values in the cache exactly as a whole forward does, and give the last rows'
    predictions: later levels attend over those keys, and only the last row is drafted from."""
    drafter, n = _drafter(tiny_target, layers), 9
    tokens = torch.randint(0, tiny_target.shape.vocab_size, (cached + n,))
    features = torch.randn(cached + n, tiny_target.shape.hidden_size)
    caches, outputs = {}, {}
    for k in (None, keep):
        caches[k] = cache = drafter.new_cache()
        if cached:
            drafter(tokens[:cached], features[:cached], torch.arange(cached), cache)
        new = slice(cached, cached + n)
        outputs[k] = drafter(tokens[new], features[new], torch.arange(cached, cached + n), cache, keep=k)
    assert outputs[keep].shape == (keep, tiny_target.shape.hidden_size)
    torch.testing.assert_close(outputs[keep], outputs[None][-keep:])  # rounding alone may differ
    assert caches[keep].length == caches[None].length == cached + n
    for whole, kept in zip(caches[None].keys + caches[None].values, caches[keep].keys + caches[keep].values):
        assert torch.equal(whole[..., : cached + n, :], kept[..., : cached + n, :])
