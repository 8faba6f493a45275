"""Log-probabilities in OpenAI's two shapes: chat's `content` entries and completions' columns.

A token is named by its text and, as OpenAI does, by its exact bytes: a byte-level BPE token can
hold part of a UTF-8 character (half of a Chinese character or an emoji), whose text alone reads as
U+FFFD; clients rebuild such characters from the bytes of consecutive tokens.
"""

from __future__ import annotations

import re
from functools import lru_cache

from taps.spec.logprobs import TokenLogprob

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # sentencepiece's byte tokens


@lru_cache(maxsize=1)
def _byte_level() -> dict[str, int]:
    """GPT-2's byte-level alphabet (one printable character per byte), character -> byte."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def token_bytes(tokenizer, token: int) -> bytes:
    """The bytes a token stands for, for byte-level BPE (SmolLM2, Qwen2, Llama 3) and sentencepiece."""
    piece = tokenizer.convert_ids_to_tokens(token)
    alphabet = _byte_level()
    if piece and all(c in alphabet for c in piece):
        return bytes(alphabet[c] for c in piece)
    if match := _BYTE_FALLBACK.fullmatch(piece):
        return bytes([int(match.group(1), 16)])
    return piece.replace("\u2581", " ").encode()


class Namer:
    """Token text and bytes, cached: a reply names the same few thousand tokens over and over."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token: int) -> tuple[str, list[int]]:
        if token not in self.cache:
            raw = token_bytes(self.tokenizer, token)
            self.cache[token] = (raw.decode("utf-8", errors="replace"), list(raw))
        return self.cache[token]


def chat_logprobs(name: Namer, entries: list[TokenLogprob]) -> dict:
    """`choices[i].logprobs` of a chat completion (or of one streamed chunk)."""

    def one(token: int, logprob: float) -> dict:
        text, raw = name(token)
        return {"token": text, "logprob": logprob, "bytes": raw}

    return {
        "content": [
            {**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]} for e in entries
        ]
    }


class CompletionLogprobs:
    """`choices[i].logprobs` of a text completion; `text_offset` counts on across streamed chunks."""

    def __init__(self, name: Namer, top: int):
        self.name, self.top, self.offset = name, top, 0

    def __call__(self, entries: list[TokenLogprob]) -> dict:
        tokens, offsets = [], []
        for e in entries:
            text = self.name(e.token)[0]
            tokens.append(text)
            offsets.append(self.offset)
            self.offset += len(text)
        return {
            "tokens": tokens,
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [_top(self.name, e) for e in entries] if self.top else None,
            "text_offset": offsets,
        }


def _top(name: Namer, entry: TokenLogprob) -> dict[str, float] | None:
    """A completions `top_logprobs` entry: token text -> log-probability (None where nothing predicts
    the token: an echoed prompt's first)."""
    return None if entry.logprob is None else {name(t)[0]: lp for t, lp in entry.top}
