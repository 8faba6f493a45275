"""Self-distillation data for a chat drafter on a CPU: the target's greedy replies to short ShareGPT prompts.

`taps features --replies target` regenerates replies for the whole corpus in order; on a CPU the
long ShareGPT prompts make that slow (about 8 s a conversation at batch 16 on two EPYC cores). This
script regenerates replies only for training prompts (seed 0, the 64 held-out conversations of
`taps features --corpus chat` removed) whose first turn has at most --max-prompt-tokens tokens, and
writes them as a `jsonl:` corpus for `taps features --replies corpus` and `taps train --init`:

    TAPS_DATA_DIR=../shared/data python benchmarks/self_distil.py --work W
    taps features --corpus jsonl:W/replies.jsonl --replies corpus --tokens 2000000 --held-out 32 \\
        --dtype float32 --threads 2 --out W/features
    taps train --features W/features --out W/eagle2-chat-sd --method eagle2 --init eagle2-chat \\
        --epochs 2 --batch-tokens 4096 --lr 3e-4 --threads 1 --dtype float32

Resumable: rerun with the same arguments to continue the regeneration.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from taps.data.chat import encode_chat
from taps.data.corpora import load_corpus, split
from taps.models.catalog import load_target
from taps.training.regenerate import regenerate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, help="folder for regenerated.jsonl and replies.jsonl")
    ap.add_argument("--prompts", type=int, default=1700, help="prompts to answer (default: %(default)s)")
    ap.add_argument("--max-prompt-tokens", type=int, default=160)
    ap.add_argument("--batch", type=int, default=32, help="generation batch (default: %(default)s)")
    ap.add_argument("--reply-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default=os.environ.get("TAPS_DATA_DIR"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    target = load_target("smollm2-135m", dtype=torch.float32)
    train, _ = split(load_corpus("chat", args.data_dir, seed=0), 64, seed=0)  # as `taps features`
    short = [
        c
        for c in train
        if c[0]["role"] == "user"
        and c[0]["content"].strip()
        and len(encode_chat(target.tokenizer, [c[0]])) <= args.max_prompt_tokens
    ]
    print(
        f"{len(short)} of {len(train)} training prompts have <= {args.max_prompt_tokens} tokens", flush=True
    )
    work = Path(args.work)
    rows = regenerate(
        target,
        short,
        work / "regenerated.jsonl",
        args.reply_tokens,
        batch_size=args.batch,
        limit=args.prompts,
    )
    with open(work / "replies.jsonl", "w") as f:
        f.writelines(json.dumps({"messages": r}) + "\n" for r in rows)
    print(f"[self-distil] {len(rows)} replies -> {work / 'replies.jsonl'}")


if __name__ == "__main__":
    main()
