"""Several same-shape drafters run as one module, with a leading member dimension.

Merged and routed strategies draft with N drafters every step. Run one by one, that is N times the
operator launches of a drafting pass; stacking the members' weights turns each projection into one
batched matmul over [N, tokens, features], so N drafters cost one pass's launches plus N times its
arithmetic. That pays where small passes are launch-bound (GPUs, small CPU matrices); on the AVX2
CPU in the README, drafting is arithmetic-bound and stacking two drafters saved about 5%. The
stacked module is an ordinary `Drafter` whose linear layers and norms carry the member dimension;
a single drafter is simply a stack of one.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from taps.models.drafter import Drafter
from taps.models.layers import RMSNorm


class StackedLinear(nn.Module):
    """N linear layers applied to N inputs at once: x [N, ..., in] -> [N, ..., out]."""

    def __init__(self, linears: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(
            torch.stack([lin.weight.detach().T for lin in linears]), requires_grad=False
        )
        has_bias = linears[0].bias is not None
        self.bias = (
            nn.Parameter(torch.stack([lin.bias.detach() for lin in linears])[:, None], requires_grad=False)
            if has_bias
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, width = x.shape[0], x.shape[-1]
        flat = x.reshape(n, -1, width)
        out = (
            torch.baddbmm(self.bias, flat, self.weight)
            if self.bias is not None
            else torch.bmm(flat, self.weight)
        )
        return out.view(*x.shape[:-1], out.shape[-1])


def stackable(a: Drafter, b: Drafter) -> bool:
    """Same architecture, draft vocabulary size and dtype: their weights stack."""
    return a.config == b.config and a.dtype == b.dtype


def stack_drafters(drafters: list[Drafter]) -> Drafter:
    """One Drafter computing all `drafters` at once (inputs and outputs gain a leading member dim).

    Every member must be attached to the same target (the embedding is shared; each keeps its own
    draft-vocabulary rows of the LM head)."""
    first = drafters[0]
    if not all(stackable(first, d) for d in drafters):
        raise ValueError("only drafters of the same shape, draft vocabulary size and dtype can be stacked")
    shared = {id(t): t for t in (first.embed, first.head_weight, first.__dict__.get("target_head"))}
    stacked = copy.deepcopy(first, memo=shared)
    names = [name for name, module in first.named_modules() if isinstance(module, (nn.Linear, RMSNorm))]
    for name in names:
        members = [d.get_submodule(name) for d in drafters]
        if isinstance(members[0], nn.Linear):
            stacked.set_submodule(name, StackedLinear(members))
        else:
            # [N, 1, H] over [N, tokens, H]; a per-head norm (qwen3's q_norm): [N, 1, 1, D] over
            # [N, tokens, heads, D]
            lead = (None, None) if name.endswith(("q_norm", "k_norm")) else (None,)
            norm = stacked.get_submodule(name)
            norm.weight = nn.Parameter(
                torch.stack([m.weight.detach() for m in members])[(slice(None), *lead)], requires_grad=False
            )
    stacked.d2t = torch.stack([d.d2t for d in drafters])
    stacked.head_weight = torch.stack([d.head_weight for d in drafters])
    stacked.members = len(drafters)
    return stacked.eval().requires_grad_(False)
