"""Prompts as the target sees them: its own chat template, and loss masks on assistant turns."""

from __future__ import annotations

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
    template, so any chat template works as long as a prefix renders to a token prefix.
    """
    ids = _render(tokenizer, messages, add_generation_prompt=False)
    mask = [0] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = len(_render(tokenizer, messages[:i], add_generation_prompt=True))
        end = len(_render(tokenizer, messages[: i + 1], add_generation_prompt=False))
        mask[start:end] = [1] * (end - start)
    return ids[:max_tokens], mask[:max_tokens]


def _render(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    if not messages:
        return []
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
