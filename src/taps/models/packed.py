"""Prepacked oneDNN weights for CPU inference: the small matmuls of a speculative step, made cheap.

A speculative step on a CPU multiplies a few rows at a time: 1 token in plain decoding, 2-30 tree
nodes in verification, a frontier of ~8 nodes per drafting level. torch's default float32 path
(MKL) handles those shapes poorly: on the AMD EPYC of the README a 576 -> 1536 projection took
~170-250 us for 4-8 rows against ~70 us for one. oneDNN with the weight reordered once into its
blocked layout took ~85-145 us for the same 4-8 rows, and the 8192-row draft head ran ~2x faster
at every row count (`benchmarks/engine.py` measures the whole forwards). So on the CPU, every
linear layer of the target and of the drafters is packed once at load time; the plain weights
stay beside the packed ones for everything that reads them (fingerprints, export, stacking).

Packing is an inference-only, CPU-only transformation (no autograd, no `.to(device)` afterwards):
`load_target` applies it to the target and `TreeDrafter` to its own copy of the drafters; training
never sees it. Where this torch build lacks the oneDNN ops, nothing is packed and F.linear runs.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def packing_available() -> bool:
    """oneDNN's prepacked linear exists in this torch build and computes what F.linear does."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        weight, x = torch.randn(8, 4), torch.randn(3, 4)
        out = _packed_matmul(x, _pack(weight), None)
        return bool(torch.allclose(out, F.linear(x, weight), atol=1e-5))
    except (RuntimeError, AttributeError, TypeError):
        return False


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)


def _packed_matmul(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class PackedLinear(nn.Module):
    """A frozen nn.Linear whose forward runs on a oneDNN-packed copy of its weight.

    `weight` / `bias` stay registered (state_dict, tied embeddings and readers see the original)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = _pack(linear.weight)  # a plain attribute: not saved, not moved

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _packed_matmul(x, self.packed, self.bias)


class PackedMembers(nn.Module):
    """N frozen linear maps applied to N inputs ([N, ..., in] -> [N, ..., out]), each member packed.

    Replaces a `StackedLinear` on the CPU: one packed matmul per member beat the batched matmul
    there (N is 2-3; the batched float32 path is the slow small-row MKL one)."""

    def __init__(self, stacked: nn.Module):
        super().__init__()
        self.weight, self.bias = (
            stacked.weight,
            stacked.bias,
        )  # [N, in, out], [N, 1, out] or None: kept for readers
        self.packed = [_pack(w.mT) for w in stacked.weight]
        self.member_bias = (
            [b.reshape(-1) for b in stacked.bias] if stacked.bias is not None else [None] * len(self.packed)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [_packed_matmul(x[i], p, b) for i, (p, b) in enumerate(zip(self.packed, self.member_bias))]
        )


def pack_linears(module: nn.Module) -> nn.Module:
    """Swap every nn.Linear (and stacked member linear) under `module` for its packed form, in place.

    A no-op off the CPU or where packing is unavailable; returns `module`."""
    from taps.models.stacked import StackedLinear

    if not packing_available() or any(p.device.type != "cpu" for p in module.parameters()):
        return module
    for name, child in list(module.named_modules()):
        if isinstance(child, nn.Linear) and name:
            module.set_submodule(name, PackedLinear(child))
        elif isinstance(child, StackedLinear):
            module.set_submodule(name, PackedMembers(child))
    return module


def packed_head(weight: torch.Tensor) -> list[torch.Tensor] | None:
    """Packed copies of a borrowed LM-head slice ([V, H], or [N, V, H] for a stack of N drafters), or
    None where packing does not apply (not on the CPU, or not available)."""
    if weight.device.type != "cpu" or not packing_available():
        return None
    return [_pack(w) for w in (weight if weight.dim() == 3 else weight[None])]


def head_matmul(hidden: torch.Tensor, packed: list[torch.Tensor], stacked: bool) -> torch.Tensor:
    """hidden [..., H] times one packed head, or [N, ..., H] times each member's (`stacked`)."""
    if not stacked:
        return _packed_matmul(hidden, packed[0], None)
    return torch.stack([_packed_matmul(hidden[i], p, None) for i, p in enumerate(packed)])
