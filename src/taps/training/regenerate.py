"""Self-distillation data: the target's own replies to a corpus's prompts.

A drafter imitates the target, and the target's own text is what it will draft at inference time,
so training on regenerated replies can beat training on the corpus's original (human or other
model) replies. Generation is batched with `transformers` (left padding, greedy) and appended to a
JSONL file after every batch, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from taps.data.chat import encode_chat


def regenerate(
    target,
    conversations: list,
    out_file: str | Path,
    max_new_tokens: int = 256,
    batch_size: int | None = None,
    limit: int | None = None,
    max_prompt_tokens: int | None = None,
) -> list:
    """First user turn of each conversation + the target's greedy reply, as 2-turn conversations.

    `batch_size` defaults to 16 on a CPU and 512 on a GPU: the training issue measured HF generate on
    an H200 at 1.1k tokens/s in batches of 128 and 5.3k in batches of 512. The rate is printed.
    Prompts longer than `max_prompt_tokens` get no reply (it would be cut from the training sequence
    anyway: pass the features' max_len), and none ever past the target's context: a batch of the
    longest ShareGPT first turns, thousands of tokens each, padded to 512 rows, would not fit a GPU."""
    from transformers import AutoModelForCausalLM

    out_file = Path(out_file)
    convs = conversations[:limit]
    done = _read(out_file)  # source index -> 2-turn conversation, empty replies included
    todo = [i for i in range(len(convs)) if i not in done]
    device = target.model.device
    batch_size = batch_size or (512 if device.type == "cuda" else 16)
    prompts = {i: encode_chat(target.tokenizer, [convs[i][0]]) for i in todo}
    longest = target.model.shape.max_position_embeddings - max_new_tokens
    if max_prompt_tokens is not None:
        longest = min(longest, max_prompt_tokens)
    skipped = {
        i: [convs[i][0], {"role": "assistant", "content": ""}] for i in todo if len(prompts[i]) > longest
    }
    if skipped:  # written as empty replies: a resumed run skips them too, `_replied` drops them
        print(f"[regenerate] {len(skipped)} prompts longer than {longest} tokens get no reply", flush=True)
        _append(out_file, skipped)
        done.update(skipped)
        todo = [i for i in todo if i not in skipped]
    if not todo:  # all replied, or none that fits: no model to load
        return _replied(done, len(convs))
    todo.sort(key=lambda i: len(prompts[i]))
    model = AutoModelForCausalLM.from_pretrained(str(target.path), dtype=target.model.dtype).to(device).eval()
    bar = tqdm(
        total=len(convs),
        initial=len(convs) - len(todo),
        unit="conv",
        desc="regenerate",
        dynamic_ncols=True,
        mininterval=20,
    )
    began, generated = time.perf_counter(), 0
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        replies, tokens = _greedy_replies(model, target, [prompts[i] for i in batch], max_new_tokens)
        generated += tokens
        rows = {i: [convs[i][0], {"role": "assistant", "content": text}] for i, text in zip(batch, replies)}
        _append(out_file, rows)
        done.update(rows)
        bar.update(len(batch))
    bar.close()
    seconds = time.perf_counter() - began
    print(
        f"[regenerate] {generated} reply tokens in {seconds:.0f} s ({generated / seconds:.0f} tok/s, "
        f"batches of {batch_size} on {device})",
        flush=True,
    )
    return _replied(done, len(convs))


def _greedy_replies(model, target, prompts: list[list[int]], max_new_tokens: int) -> tuple[list[str], int]:
    """One batch of greedy replies with HF `generate` (prompts left-padded with the first end token):
    the replies' texts and how many tokens they hold."""
    pad, width, device = target.eos_token_ids[0], max(len(p) for p in prompts), model.device
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=list(target.eos_token_ids),
            pad_token_id=pad,
        )
    seqs = out[:, width:].tolist()
    texts = [target.tokenizer.decode(seq, skip_special_tokens=True).strip() for seq in seqs]
    return texts, sum(t != pad for seq in seqs for t in seq)


def _replied(done: dict, count: int) -> list:
    """The first `count` source conversations' regenerations, in corpus order, empty replies dropped."""
    return [done[i] for i in range(count) if i in done and done[i][1]["content"]]


def _read(path: Path) -> dict:
    """Rows written so far by source index (files from before the index field are in corpus order)."""
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r.get("index", n): r["messages"] for n, r in enumerate(rows)}


def _append(path: Path, rows: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write("".join(json.dumps({"index": i, "messages": r}) + "\n" for i, r in rows.items()))
        f.flush()
        os.fsync(f.fileno())
