"""Evaluation prompts: MT-Bench, GSM8K, MATH-500, SVAMP, a long-prompt GSM8K and user JSONL files, as
`Prompt`s."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from taps.data.sources import resolve
from taps.errors import TapsError

BENCHMARKS = ("mt_bench", "gsm8k", "math500", "svamp")  # the paper's grid (`taps reproduce`)
# Long prompts, for speed where the context is long (not in the paper's grid): GSM8K after 8 worked examples
LONG_BENCHMARKS = ("gsm8k_8shot",)
FEW_SHOT = 8


@dataclass(frozen=True)
class Prompt:
    id: str
    benchmark: str
    turns: tuple[str, ...]  # user messages, each asked after the model's answer to the previous one
    category: str | None = None
    reference: str | None = None


def numbered_json_lines(path: Path) -> Iterator[tuple[int, object]]:
    """Each non-blank line's number and JSON value (a line that is not JSON is a one-line error)."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TapsError(
                        f"{path} line {n} is not valid JSON ({exc.msg}); fix or remove that line"
                    ) from exc


def read_jsonl(path: Path) -> list[dict]:
    rows = [row for _, row in numbered_json_lines(path)]
    if not rows:
        raise TapsError(f"{path} has no records")
    return rows


def _mt_bench(data_dir) -> list[Prompt]:
    return [
        Prompt(
            f"mt_bench/{r['question_id']}",
            "mt_bench",
            tuple(r["turns"]),
            r["category"],
            (r.get("reference") or [None])[0],
        )
        for r in read_jsonl(resolve("mt_bench", data_dir))
    ]


def _gsm8k(data_dir) -> list[Prompt]:
    return [
        Prompt(f"gsm8k/{i}", "gsm8k", (r["question"],), None, r["answer"].split("####")[-1].strip())
        for i, r in enumerate(read_jsonl(resolve("gsm8k/test", data_dir)))
    ]


def _worked_example(record: dict) -> str:
    """A GSM8K train pair as a few-shot example: its solution without the calculator annotations
    (`<<48/2=24>>`), ending in the answer."""
    solution, answer = record["answer"].split("####")
    solution = re.sub(r"<<[^>]*>>", "", solution).strip()
    return f"Question: {record['question']}\nAnswer: {solution} The answer is {answer.strip()}."


def _gsm8k_8shot(data_dir) -> list[Prompt]:
    """GSM8K test questions, each after the first FEW_SHOT train pairs worked out: the few-shot
    chain-of-thought format, ~1150 tokens a prompt with the default target's tokenizer (the others
    here are ~50-250). Speculative decoding cannot shorten the prefill, and each drafted row attends
    over the whole context, so speed-ups measured on short prompts need not hold here."""
    shots = "\n\n".join(_worked_example(r) for r in read_jsonl(resolve("gsm8k/train", data_dir))[:FEW_SHOT])
    return [
        Prompt(
            f"gsm8k_8shot/{i}",
            "gsm8k_8shot",
            (f"{shots}\n\nQuestion: {r['question']}\nAnswer:",),
            None,
            r["answer"].split("####")[-1].strip(),
        )
        for i, r in enumerate(read_jsonl(resolve("gsm8k/test", data_dir)))
    ]


def _math500(data_dir) -> list[Prompt]:
    return [
        Prompt(f"math500/{r['unique_id']}", "math500", (r["problem"],), r["subject"], r["answer"])
        for r in read_jsonl(resolve("math500", data_dir))
    ]


def _svamp(data_dir) -> list[Prompt]:
    rows = json.loads(resolve("svamp", data_dir).read_text(encoding="utf-8"))
    out = []
    for r in rows:
        body = r["Body"].strip()
        body = body if body.endswith((".", "?", "!")) else body + "."
        out.append(
            Prompt(
                f"svamp/{r['ID']}",
                "svamp",
                (f"{body} {r['Question'].strip()}",),
                r["Type"],
                f"{r['Answer']:g}",
            )
        )
    return out


def prompt_kind(row: object, where: str, kinds: tuple[str, ...] = ("prompt", "turns")) -> str:
    """Which of `kinds` a prompt line is written in: it must be a JSON object with exactly one of
    them (a line with both would be read one way and meant the other)."""
    if not isinstance(row, dict):
        raise TapsError(f'{where} is not a JSON object; write {{"prompt": "..."}} per line')
    found = [k for k in kinds if k in row]
    if len(found) != 1:
        named = ", ".join(f'"{k}"' for k in kinds[:-1]) + f' or "{kinds[-1]}"'
        raise TapsError(f"{where} needs exactly one of {named}")
    return found[0]


def user_turns(row: dict, kind: str, where: str) -> tuple[str, ...]:
    """The user messages of a `"prompt"` (one string) or `"turns"` (a list of strings) line, each
    non-empty: the one rule `taps eval --benchmarks jsonl:PATH` and `taps generate --input` share."""
    value = [row[kind]] if kind == "prompt" else row[kind]
    if not isinstance(value, list) or not value or not all(isinstance(t, str) and t.strip() for t in value):
        raise TapsError(f'{where}: "{kind}" must be a non-empty string or list of strings')
    return tuple(value)


def _user_jsonl(path: str) -> list[Prompt]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise TapsError(f"prompt file {file} not found; pass jsonl:PATH to a file of prompts")
    out = []
    for number, r in numbered_json_lines(file):
        where = f"{file} line {number}"
        turns = user_turns(r, prompt_kind(r, where), where)
        prompt_id = str(r.get("id", f"{file.stem}/{len(out)}"))
        out.append(Prompt(prompt_id, f"jsonl:{file.name}", turns, r.get("category"), r.get("reference")))
    if not out:
        raise TapsError(f"{file} holds no prompts; write one JSON object per line")
    return out


_LOADERS = {
    "mt_bench": _mt_bench,
    "gsm8k": _gsm8k,
    "math500": _math500,
    "svamp": _svamp,
    "gsm8k_8shot": _gsm8k_8shot,
}


def load_benchmark(
    name: str, data_dir=None, limit: int | None = None, seed: int | None = None
) -> list[Prompt]:
    """Prompts of a benchmark (or `jsonl:PATH`); `limit` keeps the first ones, or a seeded sample in
    file order."""
    if limit is not None and limit <= 0:
        raise TapsError(f"limit must be > 0, got {limit}")
    if name.startswith("jsonl:"):
        prompts = _user_jsonl(name[len("jsonl:") :])
    elif name in _LOADERS:
        prompts = _LOADERS[name](data_dir)
    else:
        known = ", ".join(BENCHMARKS + LONG_BENCHMARKS)
        raise TapsError(f"unknown benchmark {name!r}: use one of {known} or jsonl:PATH")
    if limit is None or limit >= len(prompts):
        return prompts
    if seed is None:
        return prompts[:limit]
    keep = sorted(random.Random(seed).sample(range(len(prompts)), limit))
    return [prompts[i] for i in keep]
