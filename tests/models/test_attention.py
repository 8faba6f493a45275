"""Grouped-query attention without copying keys and values computes what expanding them computes."""

import pytest
import torch
import torch.nn.functional as F

from taps.models.layers import CAUSAL, _grouped_sdpa


def _expanded(q, k, v, mask):
    groups = q.shape[-3] // k.shape[-3]
    k, v = k.repeat_interleave(groups, dim=-3), v.repeat_interleave(groups, dim=-3)
    if isinstance(mask, str):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


@pytest.mark.parametrize(
    "lead,n,mask_shape",
    [((), 1, None), ((), 5, (5, 12)), ((2,), 4, (2, 1, 4, 12)), ((3,), 6, CAUSAL)],
    ids=["one-token", "tree", "stack-of-drafters", "causal-prefill"],
)
def test_grouped_attention_equals_expanded_keys(lead, n, mask_shape):
    gen = torch.Generator().manual_seed(0)
    heads, kv_heads, dim = 6, 2, 8
    keys = n if mask_shape is CAUSAL else 12
    q = torch.randn(*lead, heads, n, dim, generator=gen)
    k, v = (torch.randn(*lead, kv_heads, keys, dim, generator=gen) for _ in range(2))
    mask = mask_shape if mask_shape in (None, CAUSAL) else torch.rand(*mask_shape, generator=gen) > 0.3
    if isinstance(mask, torch.Tensor):
        mask[..., 0] = True  # every query sees a key (else its row is NaN in both)
    q4, k4, v4, mask4 = (q[None], k[None], v[None], mask) if not lead else (q, k, v, mask)
    expected = _expanded(q4, k4, v4, mask4)
    got = _grouped_sdpa(q, k, v, mask)
    torch.testing.assert_close(got, expected if lead else expected[0], atol=1e-6, rtol=1e-6)
