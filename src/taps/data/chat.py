"""Prompts as the target sees them: its own chat template, and loss masks on assistant turns."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat

from taps.errors import TapsError


def encode_chat(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a conversation ending with an open assistant turn (what generation continues)."""
    if not messages or not any(m.get("content", "").strip() for m in messages):
        raise TapsError("the prompt is empty; give at least one non-empty message")
    if getattr(tokenizer, "chat_template", None):
        return _render(tokenizer, messages, add_generation_prompt=True)
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
    return tokenizer(text)["input_ids"]


def encode_first_turn(tokenizer, prompt) -> list[int]:
    """A benchmark prompt's first user turn, ready for generation: what the speed benchmarks decode
    (`taps eval` asks every turn instead)."""
    return encode_chat(tokenizer, [{"role": "user", "content": prompt.turns[0]}])


def encode_conversation(
    tokenizer, messages: list[dict[str, str]], max_tokens: int
) -> tuple[list[int], list[int]]:
    """Token ids of a whole conversation and a loss mask that is 1 on assistant-written tokens.

    Assistant spans are found by rendering growing prefixes of the conversation with the
    template, so any chat template works as long as a prefix renders to a token prefix. Rendering
    stops at the first prefix that reaches `max_tokens`: under that same assumption the rest would
    be cut anyway, and long ShareGPT threads (dozens of turns, thousands of tokens) then cost a few
    renders instead of two per turn over the whole thread.
    """
    ids: list[int] = []
    mask: list[int] = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            start = len(_render(tokenizer, messages[:i], add_generation_prompt=True))
            mask += [0] * (start - len(mask))
        ids = _render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        mask += [int(m["role"] == "assistant")] * (len(ids) - len(mask))
        if len(ids) >= max_tokens:
            break
    return ids[:max_tokens], mask[:max_tokens]


def encode_conversations(
    tokenizer, conversations: list, max_tokens: int, workers: int | None = None, chunk: int = 128
) -> Iterator[tuple[list[int], list[int]]]:
    """`encode_conversation` over many conversations, in order, lazily. Rendering chat templates is
    pure Python (~170k tokens/s on one core); online training of a whole corpus on a GPU would wait
    minutes for it, so chunks are encoded by a process pool (one worker per core) ahead of use."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(conversations) <= chunk:
        yield from (encode_conversation(tokenizer, c, max_tokens) for c in conversations)
        return
    parts = [conversations[i : i + chunk] for i in range(0, len(conversations), chunk)]
    pool = ProcessPoolExecutor(workers, initializer=_quiet_tokenizers)
    try:
        for encoded in pool.map(_encode_chunk, repeat(tokenizer), parts, repeat(max_tokens)):
            yield from encoded
    finally:  # a caller that stops early (its token budget met) cancels the chunks not yet begun
        pool.shutdown(wait=True, cancel_futures=True)


def _quiet_tokenizers() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _encode_chunk(tokenizer, conversations: list, max_tokens: int) -> list[tuple[list[int], list[int]]]:
    return [encode_conversation(tokenizer, c, max_tokens) for c in conversations]


def _render(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    if not messages:
        return []
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
