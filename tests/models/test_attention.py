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


def _ancestors(parents: list[int]) -> torch.Tensor:
    mask = torch.zeros(len(parents), len(parents), dtype=torch.bool)
    for i, p in enumerate(parents):
        mask[i, i] = True
        while p >= 0:
            mask[i, p], p = True, parents[p]
    return mask


def test_a_bf16_target_attends_so_that_a_tree_row_rounds_as_a_plain_step():
    """bf16 losslessness on a CPU (`taps.models.padded.attention_dtype`): a tree node attends over its
    ancestors among siblings' slots, under a mask, with other rows beside it; a plain step attends over
    the same keys packed together, alone. In bf16 or float32 attention the two sum in other orders and
    the bf16 outputs part (`benchmarks/attention_dtype.py` shows it on the default target); in the
    dtype a bf16 model on a CPU attends in, they round alike."""
    from types import SimpleNamespace

    from taps.models.padded import attention_dtype

    dtype = attention_dtype(SimpleNamespace(dtype=torch.bfloat16, device=torch.device("cpu")))
    gen = torch.Generator().manual_seed(0)
    parents = [-1, 0, 0, 1, 1, 3]  # a root, two children, and below the first child two more levels
    tree, n = _ancestors(parents), len(parents)
    for _ in range(30):
        cached = int(torch.randint(50, 400, (1,), generator=gen))
        q = (torch.randn(9, n, 64, generator=gen) * 3).bfloat16()
        k = (torch.randn(3, cached + n, 64, generator=gen) * 3).bfloat16()
        v = torch.randn(3, cached + n, 64, generator=gen).bfloat16()
        mask = torch.cat([torch.ones(n, cached, dtype=torch.bool), tree], -1)
        together = _grouped_sdpa(q.to(dtype), k.to(dtype), v.to(dtype), mask).bfloat16()
        for i in range(n):
            seen = torch.cat([torch.arange(cached), cached + tree[i].nonzero()[:, 0]])
            alone = _grouped_sdpa(q[:, i : i + 1].to(dtype), k[:, seen].to(dtype), v[:, seen].to(dtype), None)
            assert torch.equal(alone.bfloat16()[:, 0], together[:, i])
