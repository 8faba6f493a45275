"""Reply regeneration batched in corpus order against batched by prompt length, side by side.

`taps.training.regenerate` sorts the prompts it answers by length before batching, because a batch
pads every prompt to its longest. This measures what that saves on the same ShareGPT prompts in one
run: corpus order is emulated by handing `regenerate` one batch at a time (it can only sort within
it), length order by handing it all of them. Prints seconds, conversations/s and the ratio.

    TAPS_DATA_DIR=../shared/data python benchmarks/regen_order.py --prompts 64 --batch 16
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from taps.data.chat import encode_chat
from taps.data.corpora import load_corpus, split
from taps.models.catalog import load_target
from taps.training.regenerate import regenerate


def timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reply-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default=os.environ.get("TAPS_DATA_DIR"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    target = load_target("smollm2-135m", dtype=torch.float32)
    convs = split(load_corpus("chat", args.data_dir, seed=0), 64, seed=0)[0][: args.prompts]
    lengths = sorted(len(encode_chat(target.tokenizer, [c[0]])) for c in convs)
    median = lengths[len(lengths) // 2]
    print(f"{len(convs)} ShareGPT prompts of {lengths[0]}-{lengths[-1]} tokens, median {median}")
    b = args.batch
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = timed(
            lambda: [
                regenerate(
                    target, convs[i : i + b], work / f"corpus-{i}.jsonl", args.reply_tokens, batch_size=b
                )
                for i in range(0, len(convs), b)
            ]
        )
        by_length = timed(
            lambda: regenerate(target, convs, work / "length.jsonl", args.reply_tokens, batch_size=b)
        )
    for name, s in (("corpus order", corpus), ("by prompt length", by_length)):
        print(f"{name:>17}: {s:7.1f} s, {len(convs) / s:.2f} conversations/s")
    print(
        f"by length / corpus order: {corpus / by_length:.2f}x faster (batches of {b}, {args.threads} threads)"
    )


if __name__ == "__main__":
    main()
