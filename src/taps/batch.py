"""`taps generate --input FILE --output FILE`: a reply to every prompt of a JSONL file, resumable.

The workload taps is for is often a file of prompts, not one: an evaluation set, a dataset to label,
few-shot questions that share a long header. Each input line is one of
- `{"prompt": "..."}`: a user message;
- `{"turns": ["...", "..."]}`: user messages, each asked after the reply to the one before (the
  format `taps eval --benchmarks jsonl:PATH` reads, so one file serves both);
- `{"messages": [{"role": ..., "content": ...}, ...]}`: a conversation whose next reply is wanted;
with an optional `"id"` (default: the line's number among the prompts, from 0).

Each output line answers the input line at the same place: `id`, `replies` (one per turn),
`finish_reasons`, `completion_tokens`, `prompt_tokens` (read over all turns), `cached_tokens` (of
those, found in the kept cache of an earlier prompt or turn: prompts that share a system message or
a few-shot header read it once), `tau` and `seconds`; or `id` and `error` where a prompt cannot be
answered (too long for the context, say), and the run goes on. Lines are written as their replies
finish, so a run stopped part way keeps what it wrote; the same command then resumes after the last
complete line (a line cut off mid-write is dropped). At temperature > 0 every turn draws from its own
seed, derived from `--seed`, the prompt's place and the turn, and each token's draw is keyed by its
place in the reply (`taps.spec.verify.Draws`), so a resumed run samples what an uninterrupted one
would, in bf16 on a CPU exactly, in float32 up to the rounding that can move a draw at a boundary
between two tokens (and not with sampled draft chains, `--drafts sampled`, whose draws follow the
chain).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

from taps.data.benchmarks import numbered_json_lines, prompt_kind, user_turns
from taps.errors import TapsError
from taps.spec.generate import GenerationConfig
from taps.spec.verify import derived_seed

ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class BatchPrompt:
    id: str
    messages: tuple[dict, ...]  # the conversation before the first reply (ends with a user turn)
    follow_ups: tuple[str, ...] = ()  # user turns asked after each reply in turn


def read_prompts(path: str | Path) -> list[BatchPrompt]:
    """Every prompt of a JSONL file, checked before anything is generated (a bad line is a one-line
    error naming it, not a failure an hour in)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TapsError(f"prompt file {path} not found; pass a JSONL file of prompts to --input")
    prompts, ids = [], set()
    for number, row in numbered_json_lines(path):
        where = f"{path} line {number}"
        prompt = _prompt(row, len(prompts), where)
        if prompt.id in ids:
            raise TapsError(f'{where} repeats the id "{prompt.id}"; give each prompt its own id')
        ids.add(prompt.id)
        prompts.append(prompt)
    if not prompts:
        raise TapsError(f"{path} holds no prompts; write one JSON object per line")
    return prompts


def _prompt(row: object, index: int, where: str) -> BatchPrompt:
    """One line as a prompt; its id is `"id"` or, without one, its place among the prompts."""
    kind = prompt_kind(row, where, ("prompt", "turns", "messages"))
    id_ = str(row.get("id", index))
    if kind != "messages":
        turns = user_turns(row, kind, where)
        return BatchPrompt(id_, ({"role": "user", "content": turns[0]},), turns[1:])
    value = row[kind]
    if not isinstance(value, list) or not value or not all(_is_message(m) for m in value):
        raise TapsError(
            f'{where}: "messages" must be a list of {{"role": ..., "content": "..."}} ({", ".join(ROLES)})'
        )
    if value[-1]["role"] != "user":
        raise TapsError(f'{where}: the last of "messages" must be a user turn, the one to reply to')
    return BatchPrompt(id_, tuple({"role": m["role"], "content": m["content"]} for m in value))


def _is_message(m) -> bool:
    return isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)


def resume_point(out: Path, prompts: list[BatchPrompt]) -> int:
    """How many prompts `out` already answers, in order; a last line cut off mid-write is removed.
    Replies to other prompts (another input, or another order) are an error, not overwritten."""
    if not out.exists():
        return 0
    raw = out.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    if len(complete) != len(raw):
        with open(out, "r+b") as f:  # drop the line a stopped run left half-written
            f.truncate(len(complete))
    lines = complete.decode("utf-8").splitlines()
    if len(lines) > len(prompts):
        raise TapsError(
            f"{out} holds {len(lines)} replies, more than the {len(prompts)} prompts; pass another --output"
        )
    for number, (line, prompt) in enumerate(zip(lines, prompts), 1):
        try:
            got = json.loads(line).get("id")
        except (json.JSONDecodeError, AttributeError):
            got = None
        if got != prompt.id:
            raise TapsError(
                f'{out} line {number} answers id "{got}", not "{prompt.id}" (the input\'s prompt there): it '
                "holds replies to other prompts; pass another --output or remove it"
            )
    return len(lines)


def answer(decoder, prompt: BatchPrompt, index: int, config: GenerationConfig, system: str | None) -> dict:
    """Every turn of one prompt, each reply decoded after the conversation before it (`system`, if
    given, before it all); each turn draws from its own seed, derived from `config.seed`."""
    messages = list(prompt.messages)
    record = {"id": prompt.id, "replies": [], "finish_reasons": [], "completion_tokens": 0}
    record |= {"prompt_tokens": 0, "cached_tokens": 0}
    tokens = forwards = 0
    start = time.perf_counter()
    for turn, follow_up in enumerate((None, *prompt.follow_ups)):
        if follow_up is not None:
            messages += [
                {"role": "assistant", "content": record["replies"][-1]},
                {"role": "user", "content": follow_up},
            ]
        ids = decoder.encode(messages, system)
        out = decoder.decode(ids, replace(config, seed=derived_seed(config.seed, index, turn)))
        record["replies"].append(out.text or "")
        record["finish_reasons"].append(out.finish_reason)
        record["completion_tokens"] += len(out.tokens)
        record["prompt_tokens"] += len(ids)
        prefix = decoder.generator.prefix
        record["cached_tokens"] += prefix.reused if prefix is not None else 0
        tokens += sum(s.accepted + 1 for s in out.steps)
        forwards += len(out.steps)
    record["target_forwards"] = forwards
    record["tau"] = round(tokens / forwards, 3) if forwards else 1.0
    record["seconds"] = round(time.perf_counter() - start, 3)
    return record


@dataclass
class BatchSummary:
    answered: int = 0  # by this run
    resumed: int = 0  # found answered in the output already
    failed: int = 0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    seconds: float = 0.0
    drafted_tokens: int = 0  # tokens the verifying forwards emitted (tau's numerator)
    target_forwards: int = 0

    def add(self, record: dict) -> None:
        if "error" in record:
            self.failed += 1
            return
        self.answered += 1
        self.completion_tokens += record["completion_tokens"]
        self.prompt_tokens += record["prompt_tokens"]
        self.cached_tokens += record["cached_tokens"]
        self.seconds += record["seconds"]
        self.drafted_tokens += round(record["tau"] * record["target_forwards"])
        self.target_forwards += record["target_forwards"]

    @property
    def tau(self) -> float:
        """Tokens per verifying target forward over the run."""
        return self.drafted_tokens / self.target_forwards if self.target_forwards else 1.0

    def line(self, out: Path) -> str:
        speed = self.completion_tokens / self.seconds if self.seconds else 0.0
        return (
            f"[batch] {self.answered} prompts answered into {out}"
            + (f" ({self.resumed} were already there)" if self.resumed else "")
            + (f", {self.failed} failed (their lines say why)" if self.failed else "")
            + f": {self.completion_tokens} tokens in {self.seconds:.1f} s ({speed:.1f} tok/s), "
            f"tau {self.tau:.2f}; {self.cached_tokens} of {self.prompt_tokens} prompt tokens kept from "
            "earlier prompts"
        )


def run_batch(
    decoder,
    prompts: list[BatchPrompt],
    out: str | Path,
    config: GenerationConfig,
    system: str | None = None,
    resumed: int | None = None,
) -> BatchSummary:
    """Answer the prompts `out` does not answer yet, appending a line as each finishes; `resumed`:
    how many it answers, where the caller has read that already (`resume_point`)."""
    from tqdm import tqdm

    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = BatchSummary(resumed=resume_point(out, prompts) if resumed is None else resumed)
    todo = range(summary.resumed, len(prompts))
    with (
        open(out, "a", encoding="utf-8") as f,
        tqdm(todo, unit="prompt", initial=summary.resumed, total=len(prompts), disable=None) as bar,
    ):
        for index in bar:
            try:
                record = answer(decoder, prompts[index], index, config, system)
            except TapsError as exc:
                record = {"id": prompts[index].id, "error": str(exc)}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            summary.add(record)
            bar.set_postfix(
                tau=f"{summary.tau:.2f}",
                tok_s=f"{summary.completion_tokens / max(summary.seconds, 1e-9):.1f}",
            )
    return summary
