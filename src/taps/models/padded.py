"""Row-invariant decoding: every forward padded to one row count, so that bf16 rounds alike.

A matmul kernel chooses its blocking, and with it the order in which it sums, by the number of rows;
attention sums over however many keys it is given. In float32 that moves logits far below any gap
greedy decoding sees (the lossless tests hold token for token); in bf16 it does not: a 1-token plain
step and a 5-node tree verification of the same token round differently, near-tied logits flip, and
the outputs part. Measured on an avx512_bf16 EPYC (2026-11-28, bf16, T = 0, 4 GSM8K + 4 MT-Bench
prompts of 64 tokens, `benchmarks/engine.py`): 1 of 8 eagle2-math outputs equalled plain decoding;
with every forward padded to 8 rows over a static cache, 8 of 8 on every drafter row. On a Zen 4
EPYC on 2026-12-05 (16 prompts, the budget's larger trees): 5-8 of 16 unpadded, 13-16 of 16 padded
(prompt lookup's chains 16 of 16; see the slot layout below). Both halves
matter: padding fixes the matmuls' row count, and the static cache fixes how many keys attention
sums over (over a growing cache that count still differs between a plain step and a tree).

So with padding on, the loop runs the target through `GraphedTarget` with a single bucket of `rows`
rows (`taps.models.graphs.accelerated`; replayed from a CUDA graph on a GPU, eager on a CPU): plain
steps, tree verification and their logits all run as exactly `rows` rows over the whole static
cache, and trees are capped at `rows - 1` nodes (`cap_tree`). The prompt runs unpadded: plain and
speculative decoding share that prefill.

Attention in float32 too: padding cannot make a tree round like plain decoding inside attention. A
tree node's ancestors sit in other cache slots than the same tokens do when plain decoding commits
them one by one, and a GPU attention kernel (on CUDA the explicit mask selects the memory-efficient
one) works through the keys block by block, rounding in bf16 against each block's running maximum,
so where the keys fall changes the rounding. On an H200 (2026-12-04, 64 rows, bf16 attention) 60% of
eagle2-math's and 90% of ngram's outputs equalled plain decoding (`tests/gpu`). So a padded target
keeps its static cache in float32 and attends in float32 (`GraphedTarget(wide_attention=...)`):
different layouts then differ at float32 rounding, and the output is rounded to bf16 once. Float32
attention has not yet run on a GPU (no device was lent to the session that made it): the CUDA test
measures the share both ways.

It is the default in bf16 on CUDA, where a 64-row graph replay costs little more than a 1-row one.
On a CPU it is opt-in (`--pad-rows 8`): there padded plain decoding ran 1.26x slower than unpadded
(39.8 against 50.2 tok/s in the same run), more than the drafters gained; float32 is exact without it.
"""

from __future__ import annotations

import torch

CUDA_ROWS = 64  # on an H200 a 64-token graph replay cost 1.25x a 1-token one (../shared/design)


def default_rows(model) -> int:
    """Rows every decoding forward is padded to by default: CUDA_ROWS in bf16 on CUDA, else 0 (none)."""
    exact = model.dtype in (torch.float32, torch.float64)
    return CUDA_ROWS if model.device.type == "cuda" and not exact else 0


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
