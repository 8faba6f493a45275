"""How much of what the target wrote can a drafter draft at all? The share of a `taps eval` run's
output tokens that lie inside each drafter's draft vocabulary (its `d2t`), with the most frequent
tokens outside it. A token outside is never drafted, so this bounds what a reduced vocabulary costs.

    python benchmarks/vocab_coverage.py EVAL_DIR [--row eagle2-chat] [--benchmark mt_bench] \\
        [--drafters eagle2-chat,eagle2-math]
"""

from __future__ import annotations

import argparse
import collections

from safetensors.torch import load_file

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
    args = ap.parse_args()
    tokenizer = load_target(args.target).tokenizer
    records = [
        r
        for r in load_records(args.eval_dir)
        if (r["row"], r["benchmark"], r["temperature"]) == (args.row, args.benchmark, args.temperature)
    ]
    ids = [i for r in records for text in r["text"] for i in tokenizer.encode(text, add_special_tokens=False)]
    if not ids:
        raise SystemExit(
            f"no {args.row} outputs on {args.benchmark} at T = {args.temperature} in {args.eval_dir}"
        )
    print(f"{len(ids)} tokens the target wrote ({args.row}, {args.benchmark}, T = {args.temperature})\n")
    print("| drafter | draft vocabulary | tokens inside | most frequent outside |\n|---|---|---|---|")
    for name in args.drafters.split(","):
        vocab = set(load_file(drafter_path(name, args.target) / "model.safetensors")["d2t"].tolist())
        outside = collections.Counter(i for i in ids if i not in vocab)
        top = ", ".join(repr(tokenizer.decode([i])) for i, _ in outside.most_common(8))
        print(f"| {name} | {len(vocab)} | {1 - sum(outside.values()) / len(ids):.1%} | {top} |")


if __name__ == "__main__":
    main()
