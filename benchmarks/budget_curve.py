"""How drafter quality grows with the training budget: tau against training tokens, and the budget a
log-linear fit says a target tau needs.

    python benchmarks/budget_curve.py --corpus math --replies target --budgets 75000,150000,300000 \
        --work /tmp/taps-budget

For each budget (ascending) it extends one feature cache (`taps features` resumes, so each budget
costs only its new tokens), trains a drafter with the shipped drafters' settings (`taps train`, which
also measures held-out tau), and measures tau on a benchmark sample (`taps eval`, T = 0). Drafters
already shipped for the target can join the table with `--shipped NAME:TOKENS`. `--replies corpus|target`
picks the corpus's replies or the target's own (regenerated), for the comparison. Prints a markdown
table and the fit. A heavy experiment (tens of CPU-minutes per 100k tokens), not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

from taps.drafters import drafter_path
from taps.eval.runner import load_records


def taps(*args: str) -> None:
    cmd = [sys.executable, "-m", "taps.cli", *args]
    print("$ taps " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def features(work: Path, budget: int, previous: Path | None, args) -> Path:
    folder = work / f"features-{args.corpus}{'-regen' if args.replies == 'target' else ''}-{budget}"
    if previous is not None and not folder.exists():
        shutil.copytree(previous, folder)  # resume from the smaller budget instead of starting over
    taps(
        "features",
        "--corpus",
        args.corpus,
        "--out",
        str(folder),
        "--tokens",
        str(budget),
        "--threads",
        str(args.threads),
        "--replies",
        args.replies,
    )
    return folder


def train(work: Path, feats: Path, args) -> Path:
    out = work / f"{args.method}-{feats.name.removeprefix('features-')}-e{args.epochs:g}"
    if not (out / "config.json").is_file():
        taps(
            "train",
            "--features",
            str(feats),
            "--out",
            str(out),
            "--method",
            args.method,
            "--epochs",
            str(args.epochs),
            "--batch-tokens",
            "4096",
            "--lr",
            "1e-3",
            "--draft-vocab",
            "8192",
            "--threads",
            str(args.threads),
            "--resume",
        )
    return out


def benchmark_tau(work: Path, drafter: Path, args) -> float:
    run = work / f"eval-{drafter.name}-{args.benchmark}"
    taps(
        "eval",
        "--rows",
        str(drafter),
        "--benchmarks",
        args.benchmark,
        "--temperatures",
        "0",
        "--prompts",
        str(args.prompts),
        "--threads",
        str(args.threads),
        "--out",
        str(run),
    )
    steps = [a + 1 for r in load_records(run) for a in r["accept_lengths"]]
    return sum(steps) / len(steps)


def card(drafter: Path) -> dict:
    return json.loads((drafter / "config.json").read_text())["card"]


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares tau = a + b * log10(tokens)."""
    xs, ys = [math.log10(t) for t, _ in points], [y for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="math")
    ap.add_argument("--budgets", default="75000,150000,300000", help="training tokens, comma-separated")
    ap.add_argument(
        "--replies",
        choices=["target", "corpus"],
        default="target",
        help="taps features --replies (default: %(default)s)",
    )
    ap.add_argument("--method", default="eagle2", choices=["eagle2", "hass"])
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--benchmark", default="gsm8k")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument(
        "--shipped",
        default="eagle2-math:600000",
        help="NAME:TOKENS of shipped drafters to include ('' = none)",
    )
    ap.add_argument("--target-tau", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--work", required=True, help="folder for features, drafters and eval runs (reused on rerun)"
    )
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    rows = []
    previous = None
    for budget in sorted(int(b) for b in args.budgets.split(",")):
        previous = features(work, budget, previous, args)
        drafter = train(work, previous, args)
        rows.append((drafter, card(drafter)["train_tokens"]))
    for item in filter(None, args.shipped.split(",")):
        name, tokens = item.split(":")
        rows.append((drafter_path(name, "smollm2-135m"), int(tokens)))

    print(
        "\n| drafter | training tokens | epochs | final loss | final top-1 | held-out tau | "
        f"{args.benchmark} tau ({args.prompts} prompts) |"
    )
    print("|---|---|---|---|---|---|---|")
    points = []
    for drafter, tokens in sorted(rows, key=lambda r: r[1]):
        c = card(drafter)
        losses, tau = c.get("final_losses_last50", {}), benchmark_tau(work, drafter, args)
        points.append((tokens, tau))
        print(
            f"| {drafter.name} | {tokens} | {c['config']['epochs']:g} | "
            f"{losses.get('loss', float('nan')):.3f} | "
            f"{losses.get('top1', float('nan')):.3f} | "
            f"{c.get('heldout_tau', {}).get('tau', float('nan')):.3f} | {tau:.3f} |"
        )
    if len(points) >= 2:
        a, b = fit(points)
        print(f"\nfit: {args.benchmark} tau = {a:.3f} + {b:.3f} * log10(tokens)")
        if b > 0:
            print(
                f"tau {args.target_tau} at about {10 ** ((args.target_tau - a) / b):.3g} training tokens, if "
                "the trend held"
            )


if __name__ == "__main__":
    main()
