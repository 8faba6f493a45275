"""Conversations turn by turn, with the kept prefix cache (`taps chat`, `taps serve`, `Decoder`) and
without it (every turn reads its whole conversation again), side by side on one machine.

Each conversation strings MT-Bench questions together (both turns of one question, then of the next)
up to `--turns` user messages; every reply is decoded with the same drafter in both modes, and each
conversation runs in both modes back to back, their order alternating. Printed per turn: the prompt's
length, the tokens kept, the time to read the prompt (time to first token) in both modes; then the
whole conversations' time fresh over kept (the speed-up a user sees over a conversation) with a 95%
bootstrap interval over conversations, and how many replies were equal in both modes.

    TAPS_DATA_DIR=../shared/data python benchmarks/multi_turn.py --conversations 6 --turns 6 --plain
    python benchmarks/multi_turn.py --report benchmarks/results/FILE.json   # a saved run's tables again
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from taps.api import Decoder
from taps.cli import load_target_from_args
from taps.cli_parser import add_engine_args
from taps.data.benchmarks import load_benchmark
from taps.eval.intervals import ratio_interval


def conversations(benchmark: str, count: int, turns: int, data_dir) -> list[list[str]]:
    """`count` conversations of `turns` user messages each, from the benchmark's consecutive prompts."""
    questions = [t for p in load_benchmark(benchmark, data_dir) for t in p.turns]
    if count * turns > len(questions):
        raise SystemExit(f"{benchmark} has {len(questions)} user turns: ask for fewer conversations or turns")
    return [questions[i * turns : (i + 1) * turns] for i in range(count)]


def talk(decoder: Decoder, messages: list[str], max_new_tokens: int) -> list[dict]:
    """Run one conversation; per turn, its prompt length, tokens kept, read and total time, reply."""
    history: list[dict] = []
    turns = []
    for text in messages:
        ids = decoder.encode([*history, {"role": "user", "content": text}])
        start = time.perf_counter()
        out = decoder.generate(ids, max_new_tokens=max_new_tokens)
        wall = (time.perf_counter() - start) * 1000
        prefix = decoder.generator.prefix
        kept = prefix.reused if prefix is not None else 0
        turns.append(
            {
                "prompt": len(ids),
                "kept": kept,
                "read_ms": out.prefill_ms,
                "wall_ms": wall,
                "tokens": out.tokens,
                "tau": out.tau,
            }
        )
        history += [{"role": "user", "content": text}, {"role": "assistant", "content": out.text}]
    return turns


MODES = {  # name: (drafters from --drafters?, keep the prefix?)
    "kept": (True, True),
    "fresh": (True, False),
    "plain kept": (False, True),
    "plain fresh": (False, False),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--drafters", default="auto", help="as taps chat's (default: %(default)s)")
    parser.add_argument(
        "--benchmark",
        default="mt_bench",
        help="where the user turns come from (gsm8k_8shot --turns 1: one few-shot prompt a conversation, "
        "all sharing their exemplars) (default: %(default)s)",
    )
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--turns", type=int, default=6, help="user messages per conversation")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="per reply")
    parser.add_argument(
        "--plain", action="store_true", help="also decode plainly in both modes, to count equal replies"
    )
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=None, help="write every turn's figures to this JSON file")
    parser.add_argument("--report", default=None, help="print the tables of a saved --out file instead")
    add_engine_args(parser)
    args = parser.parse_args()
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        return report(saved["runs"], argparse.Namespace(**{**saved["args"], "out": None}), saved["machine"])
    target = load_target_from_args(args)
    names = list(MODES) if args.plain else ["kept", "fresh"]
    decoders = {
        name: Decoder.around(
            target, args.drafters if MODES[name][0] else "none", keep_prefix=int(MODES[name][1])
        )
        for name in names
    }
    for decoder in decoders.values():  # cost curve, each proposer's set-up: out of every measured turn
        decoder.generate("Warm up.", max_new_tokens=8)
    runs: dict[str, list[list[dict]]] = {name: [] for name in names}
    chats = conversations(args.benchmark, args.conversations, args.turns, args.data_dir)
    for i, chat in enumerate(chats):
        for name in names if i % 2 == 0 else names[::-1]:
            runs[name].append(talk(decoders[name], chat, args.max_new_tokens))
        print(f"conversation {i + 1}/{len(chats)} done", flush=True)
    machine = f"{target.name}, {target.model.dtype}, {args.threads} threads, {cpu_name()}"
    report(runs, args, machine)


def cpu_name() -> str:
    """The CPU as /proc/cpuinfo names it, with its family and model (a cloud CPU's name alone, "AMD
    EPYC", does not tell Zen 3 from Zen 4); the platform's name elsewhere."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in cpuinfo.read_text().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name, family, model = (fields.get(k, "?") for k in ("model name", "cpu family", "model"))
    return f"{name} (family {family} model {model})"


def report(runs: dict[str, list[list[dict]]], args, machine: str) -> None:
    print(
        f"\n{getattr(args, 'benchmark', 'mt_bench')}, drafters {args.drafters}, "
        f"{args.conversations} conversations x {args.turns} turns, "
        f"{args.max_new_tokens} new tokens a reply, on {machine}"
    )
    print("| turn | prompt tokens | kept | read fresh (ms) | read kept (ms) | turn fresh | turn kept |")
    print("|---|---|---|---|---|---|---|")
    for t in range(args.turns):
        rows = {m: [c[t] for c in runs[m]] for m in runs}
        print(
            f"| {t + 1} | {_mean(rows['fresh'], 'prompt'):.0f} | {_mean(rows['kept'], 'kept'):.0f} | "
            f"{_mean(rows['fresh'], 'read_ms'):.0f} | {_mean(rows['kept'], 'read_ms'):.0f} | "
            f"{_mean(rows['fresh'], 'wall_ms'):.0f} | {_mean(rows['kept'], 'wall_ms'):.0f} |"
        )
    fresh = [sum(t["wall_ms"] for t in c) for c in runs["fresh"]]
    kept = [sum(t["wall_ms"] for t in c) for c in runs["kept"]]
    ones = [1.0] * len(fresh)
    speedup = ratio_interval(fresh, ones, kept, ones)
    print(f"\nwhole conversations, fresh time over kept: {speedup} (95% interval over conversations)")
    pairs = [("kept", "fresh"), ("kept", "plain kept"), ("fresh", "plain fresh"), ("kept", "plain fresh")]
    equal = {f"{a} = {b}": _equal(runs[a], runs[b]) for a, b in pairs if a in runs and b in runs}
    for pair, (same, total) in equal.items():
        print(f"replies equal, {pair}: {same}/{total}")
    if args.out:
        with open(args.out, "w") as f:
            record = {"args": vars(args), "machine": machine, "runs": runs}
            json.dump({**record, "speedup": speedup.__dict__, "equal": equal}, f)


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def _equal(a: list[list[dict]], b: list[list[dict]]) -> tuple[int, int]:
    """Replies with the same tokens in both runs, turn by turn (a conversation whose replies part
    asks its later turns after different histories)."""
    pairs = [(x, y) for ca, cb in zip(a, b) for x, y in zip(ca, cb)]
    return sum(x["tokens"] == y["tokens"] for x, y in pairs), len(pairs)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
