"""Prompts as the target sees them: its own chat template, and loss masks on assistant turns."""

from __future__ import annotations

from taps.errors import TapsError


def encode_chat(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a conversation ending with an open assistant turn (what generation continues)."""
    if not messages or not any(m.get("content", "").strip() for m in messages):
        raise TapsError("the prompt is empty; give at least one non-empty message")
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
    return tokenizer(text)["input_ids"]
