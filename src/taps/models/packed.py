"""Prepacked CPU matmul kernels: the small matmuls of a speculative step, made cheap.

A speculative step on a CPU multiplies a few rows at a time: 1 token in plain decoding, 2-30 tree
nodes in verification, a frontier of ~1-8 nodes per drafting level. Two kernels serve them, each
with its weight packed once at load time:

- ONEDNN, for the target (exact float arithmetic, so verification stays lossless) and for drafters
  where the CPU computes bf16 natively. torch's default float32 path (MKL) handles few-row shapes
  poorly: on the AMD EPYC of the README a 576 -> 1536 projection took ~170-250 us for 4-8 rows
  against ~70 us for one; oneDNN with the weight reordered into its blocked layout took ~85-145 us.
  Its one price: for a single row MKL streams cold weights ~13% faster. Neither MKL nor oneDNN with
  a 1-row packing hint (`_reorder_linear_weight(w, 1)`, a gemv path for one row) gives a row the same
  bits whatever the row count, and exact verification needs that, so the target keeps this packing.
  Even so, on some CPUs oneDNN computes a lone row by another path than two or more: on a Zen 4 EPYC
  (AVX-512) every product with more than 1024 inputs (the target's down projection) gave 1 row other
  bits than 2-64 rows, which agreed with each other; on an Intel Xeon with AMX oneDNN's bf16
  products of 33 or more rows took another path (AMX tiles) than 1-32 rows. Each of the target's
  packed weights is probed once per machine (`exact_row_range`) and a lone row runs as two where it is
  computed apart (same cost there: 68 us), a wider product in chunks where it is (a prompt's
  prefill, which plain and speculative decoding share, still runs at once: `whole_matmuls`).
- INT8, for drafters on CPUs without native bf16 (int8 weights per output channel, activations
  quantized per call; fbgemm). A drafting level is memory-bound there: in float32 the drafter's
  weights and its 8192-row head are ~36 MB read per level. In int8 the head's matmul ran ~10x
  faster for one row (0.12 vs 1.3 ms, AVX2). Drafting precision never touches losslessness: the
  target verifies every token. It can cost acceptance, and did where one scale per call cannot fit
  the input: a drafter's first layer (`fc`) reads [token embedding | target feature], whose halves
  differ ~40x in size (SmolLM2-135M: embedding entries up to 0.83, feature channels up to 35), so
  the embedding half quantized to a few levels. On the Zen 3 EPYC (AVX2) eagle2-math drafted tau
  2.67 on 10 GSM8K prompts all in int8, 3.41 with `fc` in float32 (oneDNN) and the rest int8, 3.43
  all in float32, at 18.9 / 23.5 / 46.8 ms of drafting a step (fixed tree, `taps eval`; two runs
  at a time). So `fc` stays on ONEDNN under INT8 (`Drafter.pack_for_cpu`).

The plain weights stay beside the packed ones for everything that reads them (fingerprints, export,
stacking). Packing is inference-only and CPU-only (no autograd, no `.to(device)` afterwards):
`load_target` packs the target and `TreeDrafter` its own copy of the drafters; a drafter in training
never sees it (the frozen target makes online features on it, whole: `whole_matmuls`). Where this
torch build lacks a kernel's ops, that kernel is not used (F.linear runs).
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Kernel:
    name: str
    pack: Callable[[torch.Tensor], object]  # weight [out, in] -> packed
    matmul: Callable[[torch.Tensor, object, torch.Tensor | None], torch.Tensor]  # x [..., in] -> [..., out]

    @property
    def available(self) -> bool:
        """Whether it runs float32 weights here (see `runs`)."""
        return self.runs(torch.float32)

    def runs(self, dtype: torch.dtype) -> bool:
        """The ops exist in this torch build for weights of `dtype` on this CPU and reproduce F.linear
        (to quantization error for INT8). oneDNN's bf16 path needs AVX-512 or AVX-NE-CONVERT: on an
        AVX2-only CPU a bf16 model runs on the plain kernels instead."""
        return _runs(self, dtype)


@functools.cache
def _runs(kernel: Kernel, dtype: torch.dtype) -> bool:
    try:
        weight, x = torch.randn(16, 8, dtype=dtype), torch.randn(3, 8, dtype=dtype)
        out = kernel.matmul(x, kernel.pack(weight), None)
        return bool(torch.allclose(out.float(), F.linear(x, weight).float(), atol=0.1, rtol=0.1))
    except (RuntimeError, AttributeError, TypeError, NotImplementedError):
        return False


class RowRange(NamedTuple):
    """The row counts over which a packed matmul gives every row the bits of a plain decoding step
    (the row alone, or padded to `floor` rows): fewer rows run padded to `floor`, more than `ceiling`
    in chunks of at most `ceiling`: the most rows probed to agree, PROBE_ROWS where every count did
    (wider products were not probed, so they run in chunks too); None for a matmul that need not be
    exact."""

    floor: int = 1
    ceiling: int | None = None


ANY_ROWS = RowRange()  # a matmul that need not be exact (drafting): as many rows as given, at once
PROBE_ROWS = 64  # row counts probed: a default CPU tree verifies up to ~50 rows


def exact_row_range(kernel: Kernel, in_features: int, out_features: int, dtype: torch.dtype) -> RowRange:
    """The row counts over which `kernel` gives each row of a [rows, in] x [in, out] product the bits
    of a plain decoding step: losslessness rests on a tree's verification rounding each row as the
    plain step at its place does. Which path a kernel takes depends on the shapes, not the values, so
    each shape is probed once, on a random weight, at every row count up to PROBE_ROWS. Kernels
    differ by CPU: on a Zen 4 EPYC oneDNN computed a lone row apart from 2-64 rows (every product
    with more than 1024 inputs: floor 2); on an Intel Xeon with AMX (family 6, model 207) its bf16
    products of 33 or more rows took another path than 1-32 rows (ceiling 32)."""
    if kernel is INT8:  # int8 drafting is approximate anyway, and drafting never touches exactness
        return ANY_ROWS
    return _exact_row_range(kernel, in_features, out_features, dtype, torch.get_num_threads())


@functools.cache
def _exact_row_range(
    kernel: Kernel, in_features: int, out_features: int, dtype: torch.dtype, threads: int
) -> RowRange:
    """Probed once per process, and for oneDNN once per machine: the probe of a wide LM head takes
    ~1-2 s (64 products of up to 64 rows; float32, 2 cores), kept under TAPS_HOME/rows."""
    if kernel is not ONEDNN:
        return _probe_rows(kernel, in_features, out_features, dtype)
    from taps.config import taps_home
    from taps.device import machine_description
    from taps.files import read_measurement, write_measurement

    isa = {k: os.environ.get(k) for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")}  # kernels capped
    key = {"format": "taps-rows/3", "machine": machine_description(), "torch": torch.__version__, **isa}
    key |= {"shape": [in_features, out_features], "dtype": str(dtype), "threads": threads}
    saved = read_measurement(taps_home() / "rows", key)
    if saved is not None:
        return RowRange(*saved["rows"])
    rows = _probe_rows(kernel, in_features, out_features, dtype)
    write_measurement(taps_home() / "rows", key, {"rows": list(rows)})
    return rows


def _probe_rows(kernel: Kernel, in_features: int, out_features: int, dtype: torch.dtype) -> RowRange:
    gen = torch.Generator().manual_seed(0)
    packed = kernel.pack((torch.randn(out_features, in_features, generator=gen) * 0.02).to(dtype))
    trials = [
        torch.randn(PROBE_ROWS, in_features, generator=gen).to(dtype) for _ in range(_trials(out_features))
    ]
    for floor in (1, 2):
        agree = min(_agreeing_rows(kernel, packed, x, floor) for x in trials)
        if agree > floor or agree == PROBE_ROWS:  # floor 1 with agree 1: a lone row computed apart
            return RowRange(floor, agree)
    return RowRange(2, 2)  # nothing beyond pairs agreed: verify in pairs


def _trials(out_features: int) -> int:
    """Random inputs to probe a shape with. Whether another path's sums round to other bits depends on
    the values, most of all in bf16: with AMX capped off (`ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`) the
    down projection computed a lone row apart from 2+ rows, which one input of 64 rows showed only in
    products of 18+ rows and another from 7 (`benchmarks/row_paths.py`), so a one-input probe kept
    floor 1, ceiling 17. Narrow weights, cheap to probe, get up to 8 inputs (that found floor 2,
    ceiling 64 there), an LM head (whose 49k outputs a row show a change at once) one."""
    return max(1, min(8, 49152 // out_features))


def plain_steps(kernel: Kernel, packed: object, x: torch.Tensor, floor: int) -> torch.Tensor:
    """Each row of x [rows, in] as a plain decoding step computes it: alone, or padded to `floor` rows."""
    padded = RowRange(floor, None)
    return torch.cat([matmul_rows(kernel, x[i : i + 1], packed, None, padded) for i in range(len(x))])


def _agreeing_rows(kernel: Kernel, packed: object, x: torch.Tensor, floor: int) -> int:
    """The most rows r such that every product of 1..r rows of x gives each row its plain step's bits."""
    steps = plain_steps(kernel, packed, x, floor)
    agree = 1
    while agree < len(x) and torch.equal(kernel.matmul(x[: agree + 1], packed, None), steps[: agree + 1]):
        agree += 1
    return agree


def rows_apart(kernel: Kernel, packed: object, x: torch.Tensor) -> int:
    """How many rows of x [rows, in] `kernel` gives other bits alone than all together."""
    together = kernel.matmul(x, packed, None)
    return sum(
        not torch.equal(kernel.matmul(x[i : i + 1], packed, None), together[i : i + 1]) for i in range(len(x))
    )


_WHOLE = ContextVar("whole_matmuls", default=False)


@contextmanager
def whole_matmuls() -> Iterator[None]:
    """Inside, packed matmuls run all their rows at once, never in chunks: for forwards that plain and
    speculative decoding share (a prompt's prefill), whose rows need no plain step's bits, and where
    one product is far cheaper (on the AMX Xeon, bf16, a 1150-token prefill took ~1.55x as long in
    chunks of 32, `benchmarks/row_paths.py`). Entered through `reading_in` by the target's forwards
    that read tokens in, and by online training's features (`taps.training.trainer.online_features`)."""
    token = _WHOLE.set(True)
    try:
        yield
    finally:
        _WHOLE.reset(token)


def reading_in(n: int, tree_mask) -> contextlib.AbstractContextManager:
    """`whole_matmuls` for a forward that reads `n` > 1 tokens in without a tree (a prompt, or the
    next turn of a conversation): plain and speculative decoding read them alike, so their rows need
    not round as decoding steps do; else nothing."""
    return whole_matmuls() if tree_mask is None and n > 1 else contextlib.nullcontext()


def matmul_rows(
    kernel: Kernel, x: torch.Tensor, packed: object, bias, rows: RowRange = ANY_ROWS, min_rows: int = 1
) -> torch.Tensor:
    """`kernel.matmul` within the row counts `rows` where it is exact: fewer rows than its floor or
    `min_rows` (the target's row floor) padded with zero rows (a row's bits do not depend on the
    others there), more than its ceiling run in chunks (unless inside `whole_matmuls`)."""
    count, width = x.numel() // x.shape[-1], x.shape[-1]
    floor = max(min_rows, rows.floor)
    if rows.ceiling is not None:
        floor = min(floor, rows.ceiling)
    if floor <= count and (rows.ceiling is None or count <= rows.ceiling or _WHOLE.get()):
        return kernel.matmul(x, packed, bias)
    flat = x.reshape(count, width)
    if count < floor:
        out = kernel.matmul(torch.cat([flat, flat.new_zeros(floor - count, width)]), packed, bias)[:count]
    else:
        size = rows.ceiling
        chunks = [
            matmul_rows(kernel, flat[i : i + size], packed, bias, rows, min_rows)
            for i in range(0, count, size)
        ]
        out = torch.cat(chunks)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _onednn_pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)


def _onednn_matmul(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _int8_pack(weight: torch.Tensor) -> object:
    weight = weight.detach().float()
    scales = (weight.abs().amax(1) / 127).clamp(min=1e-12).double()
    zeros = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # torch flags quantized tensor creation as deprecated; the op still runs
        warnings.simplefilter("ignore")
        quantized = torch.quantize_per_channel(weight, scales, zeros, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(quantized, None)


def _int8_matmul(x: torch.Tensor, packed: object, bias: torch.Tensor | None) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1]).float()
    out = torch.ops.quantized.linear_dynamic(flat, packed, True).view(*x.shape[:-1], -1)
    return out + bias.float() if bias is not None else out


ONEDNN = Kernel("onednn", _onednn_pack, _onednn_matmul)
INT8 = Kernel("int8", _int8_pack, _int8_matmul)


def packing_available() -> bool:
    """Whether the target's kernel (exact oneDNN) runs here."""
    return ONEDNN.available


def drafting_kernel(dtype: torch.dtype) -> Kernel | None:
    """INT8 for float32 drafters on CPUs without native bf16 (where it is available), else ONEDNN."""
    from taps.device import native_bf16

    if dtype == torch.float32 and not native_bf16(torch.device("cpu")) and INT8.available:
        return INT8
    return ONEDNN if ONEDNN.runs(dtype) else None


class PackedLinear(nn.Module):
    """A frozen nn.Linear whose forward runs on a packed copy of its weight.

    `weight` / `bias` stay registered (state_dict, tied embeddings and readers see the original).
    `exact`: each row must get a plain decoding step's bits whatever the row count (the target's
    layers; see `exact_row_range`), not only approximately what F.linear gives (a drafter's)."""

    def __init__(self, linear: nn.Linear, kernel: Kernel = ONEDNN, exact: bool = False):
        super().__init__()
        self.weight, self.bias, self.kernel = linear.weight, linear.bias, kernel
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = kernel.pack(linear.weight)  # a plain attribute: not saved, not moved
        self.exact = exact
        dtype = linear.weight.dtype
        self.rows = exact_row_range(kernel, self.in_features, self.out_features, dtype) if exact else ANY_ROWS
        self.min_rows = 1  # the target's row floor (`TargetModel.set_row_floor`)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return matmul_rows(self.kernel, x, self.packed, self.bias, self.rows, self.min_rows).to(x.dtype)


class PackedMembers(nn.Module):
    """N frozen linear maps applied to N inputs ([N, ..., in] -> [N, ..., out]), each member packed.

    Replaces a `StackedLinear` on the CPU: one packed matmul per member beat the batched matmul
    there (N is 2-3; the batched float32 path is the slow few-row MKL one)."""

    def __init__(self, stacked: nn.Module, kernel: Kernel = ONEDNN):
        super().__init__()
        # stacked.weight [N, in, out] and bias [N, 1, out] stay for readers
        self.weight, self.bias, self.kernel = stacked.weight, stacked.bias, kernel
        self.packed = [kernel.pack(w.mT) for w in stacked.weight]
        no_bias = [None] * len(self.packed)
        self.member_bias = [b.reshape(-1) for b in stacked.bias] if stacked.bias is not None else no_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.kernel.matmul(x[i], p, b) for i, (p, b) in enumerate(zip(self.packed, self.member_bias))]
        return torch.stack(outs).to(x.dtype)


def pack_linears(module: nn.Module, kernel: Kernel | None = ONEDNN, exact: bool = False) -> nn.Module:
    """Swap every nn.Linear (and stacked member linear) under `module` for its packed form, in place;
    `exact` as in `PackedLinear`. A no-op off the CPU, or with no kernel / an unavailable one;
    returns `module`."""
    from taps.models.stacked import StackedLinear

    params = list(module.parameters())
    if kernel is None or any(p.device.type != "cpu" for p in params):
        return module
    if not all(kernel.runs(dtype) for dtype in {p.dtype for p in params}):
        return module
    for name, child in list(module.named_modules()):
        if name and isinstance(child, (nn.Linear, StackedLinear)):
            module.set_submodule(name, packed(child, kernel, exact))
    return module


def packed(linear: nn.Module, kernel: Kernel, exact: bool = False) -> nn.Module:
    """The packed form of one nn.Linear or StackedLinear (callers check device and kernel; stacked
    members are drafters', never exact)."""
    from taps.models.stacked import StackedLinear

    if isinstance(linear, StackedLinear):
        return PackedMembers(linear, kernel)
    return PackedLinear(linear, kernel, exact)


@dataclass
class PackedMatmul:
    """A packed weight ([out, in], or [N, out, in] for a stack of N drafters, packed per member) and its
    bias, called like a linear layer. Not an nn.Module, so it adds nothing to a state_dict: it serves
    the drafters' borrowed LM-head slice and the fused projections (`fuse`), whose weights are
    registered elsewhere."""

    kernel: Kernel
    members: list
    biases: list
    stacked: bool
    rows: RowRange = ANY_ROWS  # one weight only: where it is exact, see `exact_row_range`
    min_rows: int = 1  # one weight only: the target's row floor (`TargetModel.set_row_floor`)

    @classmethod
    def of(
        cls,
        weight: torch.Tensor,
        kernel: Kernel | None,
        bias: torch.Tensor | None = None,
        exact: bool = False,
    ) -> PackedMatmul | None:
        """`exact` as in `PackedLinear` (one weight only)."""
        if kernel is None or weight.device.type != "cpu" or not kernel.runs(weight.dtype):
            return None
        weights = weight.detach() if weight.dim() == 3 else weight.detach()[None]
        biases = [None] * len(weights) if bias is None else list(bias.detach().reshape(len(weights), -1))
        members, stacked = [kernel.pack(w) for w in weights], weight.dim() == 3
        in_features, out_features = weight.shape[-1], weight.shape[-2]
        exact = exact and not stacked
        rows = exact_row_range(kernel, in_features, out_features, weight.dtype) if exact else ANY_ROWS
        return cls(kernel, members, biases, stacked, rows)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] (one weight) or [N, ..., in] (a stack) -> [..., out] / [N, ..., out], in x's dtype."""
        if not self.stacked:
            member, bias = self.members[0], self.biases[0]
            return matmul_rows(self.kernel, x, member, bias, self.rows, self.min_rows).to(x.dtype)
        pairs = zip(self.members, self.biases)
        return torch.stack([self.kernel.matmul(x[i], p, b) for i, (p, b) in enumerate(pairs)]).to(x.dtype)


def fuse(parts: list[nn.Module]) -> PackedMatmul | None:
    """One packed matmul for packed linears that read the same input (q, k and v; gate and up), their
    outputs side by side in `parts` order; None unless all are packed alike.

    Why: a CPU decoding step is ~200 small matmuls whose fixed costs add up. On the CI-class EPYC
    (AVX2, 1 thread, float32) fusing q/k/v and gate/up took the default target's 1-token forward from
    58.6 to 55.6 ms and an 8-token one from 90.6 to 83.0 ms, same bits (`benchmarks/cpu_forward.py`).
    The parts' own packings are freed (the forward runs the fused one; their weights stay registered
    for readers): for a 0.5B target they would hold ~1.3 GB."""
    kinds, kernels = {type(p) for p in parts}, {getattr(p, "kernel", None) for p in parts}
    if len(kinds) != 1 or kinds.pop() not in (PackedLinear, PackedMembers) or len(kernels) != 1:
        return None
    if len({p.bias is None for p in parts}) != 1 or len({getattr(p, "exact", False) for p in parts}) != 1:
        return None
    stacked = isinstance(parts[0], PackedMembers)  # its weight is [N, in, out], its bias [N, 1, out]
    weight = torch.cat([p.weight for p in parts], -1).mT if stacked else torch.cat([p.weight for p in parts])
    bias = None if parts[0].bias is None else torch.cat([p.bias for p in parts], -1)
    fused = PackedMatmul.of(weight, kernels.pop(), bias, getattr(parts[0], "exact", False))
    for part in parts:
        part.packed = None
    return fused
