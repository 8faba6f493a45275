"""bf16 that rounds alike: plain steps and tree verification give a token the same bits.

A matmul kernel chooses its blocking, and with it the order in which it sums, by the number of rows;
attention sums over however many keys it is given, in the order the cache slots hold them (a tree
node's ancestors sit among its siblings' slots, a plain step's keys side by side). In float32 that
moves logits far below any gap greedy decoding sees (the lossless tests hold token for token); in
bf16 it does not: a 1-token plain step and a 5-node tree verification of the same token round
differently, near-tied logits flip, and the outputs part. Measured on an avx512_bf16 EPYC
(2026-11-28, 4 GSM8K + 4 MT-Bench prompts of 64 tokens, T = 0, `benchmarks/engine.py`): 1 of 8
eagle2-math outputs equalled plain decoding; on a Zen 4 EPYC (2026-12-05, 16 prompts) 5-8 of 16.

On a CPU, unpadded (the default since 2026-12-05). Two causes, two fixes:
- the packed matmuls (`taps.models.packed`) give a row the same bits whatever the row count: oneDNN
  computes a lone row apart where a product has more than 1024 inputs (the down projection, Zen 4),
  and that row runs as two; in bf16 the difference shows in few rows (4 of 64 random ones), which a
  probe of one row had missed until 2026-12-05. On an AMX Xeon its bf16 products of 33+ rows take
  another path, and wider trees are verified in chunks of 32 rows (since 2026-12-06, `exact_row_range`);
- attention sums in float64 (`attention_dtype`): the cache holds the bf16 keys and values exactly,
  their products with a bf16 query are exact, and sums taken in another order agree to ~1e-16, far
  below the bf16 rounding of the result (in float32 they agree to ~1e-7, which still flips bf16
  roundings: on the Zen 4 EPYC none of 20 random 6-token chains gave every row a plain step's bits
  attending in float32 or bf16, all 20 in float64, `benchmarks/attention_dtype.py`). It costs what
  attention costs twice over: there a 1-token forward of SmolLM2-135M took 1.10x its bf16-attention
  time at 300 tokens of context and 1.31x at 1000, a 6-token verification 1.19x and 1.50x.
  `--attention model` keeps bf16 attention. A prompt's prefill attends in bf16 (plain and
  speculative decoding share it; in float64 a 1000-token prompt took 2.76 s against 1.78 s), writing
  its keys and values into the float64 cache exactly.
With both, every row of `benchmarks/engine.py` gave 16 of 16 outputs equal to plain decoding there
(docs/speed-cpu.md), unpadded.

Padded (`--pad-rows N`, and by default in bf16 on CUDA): the loop runs the target through
`GraphedTarget` with a single bucket of `rows` rows (`taps.models.graphs.accelerated`; replayed from a
CUDA graph on a GPU, eager on a CPU): plain steps, tree verification and their logits all run as
exactly `rows` rows over the whole static cache, and trees are capped at `rows - 1` nodes
(`cap_tree`). The prompt runs unpadded: plain and speculative decoding share that prefill. A GPU
needs it: its matmuls round by the row count, and a 64-row graph replay costs little more than a
1-row one. Attention there runs in float32, not bf16: a GPU attention kernel (on CUDA the explicit
mask selects the memory-efficient one) works through the keys block by block, rounding in bf16
against each block's running maximum, so where the keys fall changes the rounding. On an H200
(2026-12-04, 64 rows, bf16 attention) 60% of eagle2-math's and 90% of ngram's outputs equalled plain
decoding (`tests/gpu`). Float32 (or float64) attention has not yet run on a GPU (no device was lent to
the sessions that made them): the CUDA test measures the share both ways.
"""

from __future__ import annotations

import torch

CUDA_ROWS = 64  # on an H200 a 64-token graph replay cost 1.25x a 1-token one (../shared/design)


def default_rows(model) -> int:
    """Rows every decoding forward is padded to by default: CUDA_ROWS in bf16 on CUDA, else 0 (none)."""
    exact = model.dtype in (torch.float32, torch.float64)
    return CUDA_ROWS if model.device.type == "cuda" and not exact else 0


def attention_dtype(model, padded: bool = False) -> torch.dtype:
    """The dtype a bf16/fp16 model's KV cache holds and its attention sums in: float64 on a CPU (see
    above: bf16 rounds a plain step as verification then; its cost is there), float32 on CUDA
    where forwards are `padded` alike (float64 attention has not run on a GPU here), else the model's
    own dtype, as for float32 and float64 models everywhere and wherever `--attention model` was asked
    (`model.attention`). `--attention float32|float64` asks for that dtype on any device: so that one
    lent GPU can measure float64's speed and equality beside the default's (`benchmarks/gpu_check.sh`)."""
    choice = getattr(model, "attention", "auto")
    if model.dtype not in (torch.bfloat16, torch.float16) or choice == "model":
        return model.dtype
    if choice in ("float32", "float64"):
        return getattr(torch, choice)
    if model.device.type == "cpu":
        return torch.float64
    return torch.float32 if padded else model.dtype


def invariant_rows(model) -> int:
    """The rows chosen for this model: `--pad-rows` when set on it at load, else `default_rows`."""
    rows = model.__dict__.get("pad_rows")
    return default_rows(model) if rows is None else rows


def cap_tree(total_tokens: int, rows: int) -> int:
    """The most draft nodes a padded verification may hold (the root takes one row)."""
    return min(total_tokens, rows - 1) if rows > 1 else total_tokens


def pad_to(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x [n, ...] with its last row repeated up to `rows` rows (n <= rows)."""
    return torch.cat([x, x[-1:].expand(rows - x.shape[0], *x.shape[1:])])


@torch.inference_mode()
def padded_logits(model, hidden: torch.Tensor, rows: int) -> torch.Tensor:
    """The LM head run on `rows` rows (more: unpadded) whatever the number of real ones. `hidden` is
    [n, H]; one vector [H] is one row (until 2026-12-05 its H entries were taken for rows here, and
    only the first H logits came back: the prefill's first token was chosen among the first 576 of
    SmolLM2's 49152 tokens wherever the target ran padded or through CUDA graphs)."""
    if hidden.dim() == 1:
        return padded_logits(model, hidden[None], rows)[0]
    n = hidden.shape[0]
    return model.logits(hidden if n >= rows else pad_to(hidden, rows))[:n]
