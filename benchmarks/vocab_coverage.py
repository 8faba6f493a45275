"""How much of what the target wrote can a drafter draft at all? The share of a `taps eval` run's
output tokens that lie inside each drafter's draft vocabulary (its `d2t`), with the most frequent
tokens outside it. A token outside is never drafted, so this bounds what a reduced vocabulary costs.
With the context vocabulary (`taps.spec.vocabulary`, the CPU default) a token is also draftable once
the conversation so far holds it: its user turns up to that reply and the replies before the token.

    TAPS_DATA_DIR=../shared/data python benchmarks/vocab_coverage.py EVAL_DIR [--row eagle2-chat] \\
        [--benchmark mt_bench] [--drafters eagle2-chat,eagle2-math]
"""

from __future__ import annotations

import argparse
import collections

from safetensors.torch import load_file

from taps.data.benchmarks import load_benchmark
from taps.drafters import drafter_path
from taps.eval.runner import load_records
from taps.models.catalog import load_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("eval_dir")
    ap.add_argument("--row", default="eagle2-chat", help="the eval row whose outputs to read")
    ap.add_argument("--benchmark", default="mt_bench")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--drafters", default="eagle2-chat,eagle2-math")
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--data-dir", default=None, help="local data mirror (default: $TAPS_DATA_DIR)")
    args = ap.parse_args()
    tokenizer = load_target(args.target).tokenizer
    records = [
        r
        for r in load_records(args.eval_dir)
        if (r["row"], r["benchmark"], r["temperature"]) == (args.row, args.benchmark, args.temperature)
    ]
    prompts = {p.id: p for p in load_benchmark(args.benchmark, args.data_dir)}
    replies = [_reply_tokens(tokenizer, prompts[r["prompt_id"]].turns, r["text"]) for r in records]
    ids = [token for reply in replies for token, _ in reply]
    if not ids:
        raise SystemExit(
            f"no {args.row} outputs on {args.benchmark} at T = {args.temperature} in {args.eval_dir}"
        )
    print(f"{len(ids)} tokens the target wrote ({args.row}, {args.benchmark}, T = {args.temperature})\n")
    print(
        "| drafter | draft vocabulary | tokens inside | inside with the context "
        "| most frequent outside both |\n|---|---|---|---|---|"
    )
    for name in args.drafters.split(","):
        vocab = set(load_file(drafter_path(name, args.target) / "model.safetensors")["d2t"].tolist())
        inside = sum(token in vocab for token in ids)
        outside = collections.Counter(
            token for reply in replies for token, in_context in reply if token not in vocab and not in_context
        )
        top = ", ".join(repr(tokenizer.decode([i])) for i, _ in outside.most_common(8))
        with_context = 1 - sum(outside.values()) / len(ids)
        print(f"| {name} | {len(vocab)} | {inside / len(ids):.1%} | {with_context:.1%} | {top} |")


def _reply_tokens(tokenizer, turns: tuple[str, ...], texts: list[str]) -> list[tuple[int, bool]]:
    """Each token the target wrote in one conversation, and whether the context held it before."""
    seen: set[int] = set()
    out = []
    for turn, text in zip(turns, texts):
        seen.update(tokenizer.encode(turn, add_special_tokens=False))
        for token in tokenizer.encode(text, add_special_tokens=False):
            out.append((token, token in seen))
            seen.add(token)
    return out


if __name__ == "__main__":
    main()
