"""Tables and plots from eval records: tau and speed-up per row x benchmark x temperature,
MT-Bench categories, router behaviour, and confidence vs entropy as signals of acceptance."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from taps.errors import TapsError
from taps.eval.intervals import Interval, ratio_interval
from taps.eval.runner import load_records, pooled_tau


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    values = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(values):  # average ranks over ties
        j = i
        while j + 1 < len(values) and values[j + 1] == values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def summarise(records: list[dict]) -> dict[tuple[str, str, float], dict]:
    """Per (row, benchmark, temperature): tau (tokens per verifying forward), tok/s, speed-up vs plain."""
    cells: dict[tuple[str, str, float], list[dict]] = defaultdict(list)
    for r in records:
        cells[(r["row"], r["benchmark"], r["temperature"])].append(r)
    out = {}
    for key, recs in cells.items():
        accepts = [a for r in recs for a in r["accept_lengths"]]
        tokens, seconds = sum(r["new_tokens"] for r in recs), sum(r["wall_ms"] for r in recs) / 1000
        out[key] = {
            "tau": pooled_tau(accepts) if accepts else (1.0 if key[0] == "plain" else float("nan")),
            "tok_s": tokens / seconds if seconds else float("nan"),
            "prompts": len(recs),
            "draft_ms_per_step": sum(r["draft_ms"] for r in recs) / max(1, len(accepts)),
        }
    for (_row, bench, temp), cell in out.items():
        plain = out.get(("plain", bench, temp))
        cell["speedup"] = cell["tok_s"] / plain["tok_s"] if plain else float("nan")
    for key, recs in cells.items():
        out[key] |= _intervals(recs, cells.get(("plain", key[1], key[2]), []))
    return out


def _intervals(recs: list[dict], plain: list[dict]) -> dict[str, Interval | None]:
    """A cell's tau and speed-up with 95% bootstrap intervals over its prompts (`taps.eval.intervals`;
    the speed-up paired with plain decoding prompt by prompt); None where there is nothing to resample
    (a single prompt, a row without verifying steps, no plain row)."""
    out: dict[str, Interval | None] = {"tau_interval": None, "speedup_interval": None}
    if len(recs) < 2:
        return out
    if all(r["accept_lengths"] for r in recs):
        out["tau_interval"] = ratio_interval(
            [sum(a + 1 for a in r["accept_lengths"]) for r in recs], [len(r["accept_lengths"]) for r in recs]
        )
    by_prompt = {r["prompt_id"]: r for r in plain}
    pairs = [(r, by_prompt[r["prompt_id"]]) for r in recs if r["prompt_id"] in by_prompt]
    if len(pairs) >= 2 and recs[0]["row"] != "plain":
        out["speedup_interval"] = ratio_interval(
            *([p[i][k] for p in pairs] for i in (0, 1) for k in ("new_tokens", "wall_ms"))
        )
    return out


def _fmt(x: float, spec: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _layout(summary: dict) -> tuple[list[str], list[tuple[str, float]]]:
    """The summary's rows in run order, and its (benchmark, temperature) columns, by temperature."""
    rows = list(dict.fromkeys(k[0] for k in summary))
    return rows, sorted({(k[1], k[2]) for k in summary}, key=lambda c: (c[1], c[0]))


def tables(summary: dict) -> tuple[str, list[list]]:
    """The tau (speed-up) table, and the CSV rows of summary.csv (with the 95% intervals)."""
    rows, cols = _layout(summary)
    head = "| row | " + " | ".join(f"{b} T={t:g}" for b, t in cols) + " | mean tau |"
    lines = [
        "**Acceptance length tau** (tokens per target forward; speed-up over our plain decoding in the same "
        "run)",
        "",
        head,
        "|" + "---|" * (len(cols) + 2),
    ]
    csv_rows = [
        [
            "row", "benchmark", "temperature", "tau", "tok_s", "speedup", "prompts",
            "tau_low", "tau_high", "speedup_low", "speedup_high",
        ]
    ]  # fmt: skip
    for row in rows:
        cells, taus = [], []
        for b, t in cols:
            c = summary.get((row, b, t))
            if c is None:
                cells.append("")
                continue
            cells.append(f"{_fmt(c['tau'], '.2f')} ({_fmt(c['speedup'], '.2f')}x)")
            if not math.isnan(c["tau"]):
                taus.append(c["tau"])
            bounds = [
                getattr(c.get(k), end, "")
                for k in ("tau_interval", "speedup_interval")
                for end in ("low", "high")
            ]
            csv_rows.append([row, b, t, c["tau"], c["tok_s"], c["speedup"], c["prompts"], *bounds])
        lines.append(
            f"| {row} | "
            + " | ".join(cells)
            + f" | {_fmt(sum(taus) / len(taus) if taus else float('nan'), '.2f')} |"
        )
    return "\n".join(lines), csv_rows


def interval_table(summary: dict) -> str:
    """The cells' 95% bootstrap intervals, laid out as the tau table ('' where no cell has two
    prompts): how far apart two rows must be before their prompts tell them apart."""
    rows, cols = _layout(summary)
    if not any(c["tau_interval"] or c["speedup_interval"] for c in summary.values()):
        return ""
    lines = [
        "**95% intervals** (bootstrap over each cell's prompts: tau, then the speed-up paired with plain "
        "decoding prompt by prompt; rows whose intervals overlap may be level)",
        "",
        "| row | " + " | ".join(f"{b} T={t:g}" for b, t in cols) + " |",
        "|" + "---|" * (len(cols) + 1),
    ]
    for row in rows:
        cells = []
        for b, t in cols:
            c = summary.get((row, b, t), {})
            tau, speedup = c.get("tau_interval"), c.get("speedup_interval")
            parts = [f"{tau.low:.2f}-{tau.high:.2f}" if tau else "–"]
            parts.append(f"{speedup.low:.2f}-{speedup.high:.2f}x" if speedup else "–")
            cells.append(" / ".join(parts) if c else "")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_rows(records: list[dict], a: str, b: str) -> str:
    """Row a against row b on the prompts both ran: per cell and over all cells, tau a / tau b and
    tok/s a / tok/s b, each with a 95% bootstrap interval over the prompts, paired prompt by prompt
    (resampled within each cell over all of them). Where an interval holds 1, these prompts do not
    tell the two rows apart."""
    rows = {r["row"] for r in records}
    for name in (a, b):
        if name not in rows:
            raise TapsError(f"no row {name!r} in this run; its rows: {', '.join(sorted(rows))}")
    by_key = {(r["row"], r["benchmark"], r["temperature"], r["prompt_id"]): r for r in records}
    pairs = [
        (r, by_key[(b, *key)])
        for r in records
        if r["row"] == a and (b, *(key := (r["benchmark"], r["temperature"], r["prompt_id"]))) in by_key
    ]
    if not pairs:
        raise TapsError(f"rows {a!r} and {b!r} share no prompt in this run; compare rows of one grid")
    cells: dict[tuple[str, float], list[tuple[dict, dict]]] = defaultdict(list)
    for pair in pairs:
        cells[(pair[0]["benchmark"], pair[0]["temperature"])].append(pair)
    lines = [
        f"**{a}** over **{b}** (95% bootstrap intervals over the prompts both ran, paired prompt by prompt)",
        "",
        "| cell | prompts | tau | tau ratio | speed ratio |",
        "|---|---|---|---|---|",
    ]
    for (bench, temp), group in sorted(cells.items(), key=lambda c: (c[0][1], c[0][0])):
        lines.append(_comparison_line(f"{bench} T={temp:g}", group, [0] * len(group)))
    strata = [(p[0]["benchmark"], p[0]["temperature"]) for p in pairs]
    lines.append(_comparison_line("all cells", pairs, strata))
    return "\n".join(lines)


def _comparison_line(label: str, pairs: list[tuple[dict, dict]], strata: list) -> str:
    """One line of `compare_rows`: each row's tau, and the two ratios with their intervals."""

    def column(i: int, field) -> list[float]:
        return [field(p[i]) for p in pairs]

    def emitted(r: dict) -> int:  # tokens the verifying forwards emitted (plain decoding: one each)
        return sum(x + 1 for x in r["accept_lengths"]) if r["accept_lengths"] else r["target_steps"]

    def forwards(r: dict) -> int:
        return len(r["accept_lengths"]) or r["target_steps"]

    tau = ratio_interval(
        column(0, emitted), column(0, forwards), column(1, emitted), column(1, forwards), strata=strata
    )
    speed = ratio_interval(
        *(column(i, lambda r, k=k: r[k]) for i in (0, 1) for k in ("new_tokens", "wall_ms")), strata=strata
    )
    taus = [sum(column(i, emitted)) / max(1, sum(column(i, forwards))) for i in (0, 1)]
    taus_text = f"{taus[0]:.2f} / {taus[1]:.2f}"
    return f"| {label} | {len(pairs)} | {taus_text} | {_ratio_text(tau)} | {_ratio_text(speed)} |"


def _ratio_text(interval: Interval) -> str:
    """'1.040 (0.990-1.090)', or the ratio alone where there was nothing to resample."""
    if math.isnan(interval.low):
        return _fmt(interval.value, ".3f")
    return f"{interval.value:.3f} ({interval.low:.3f}-{interval.high:.3f})"


def timing_table(records: list[dict]) -> str:
    """Where a step's time goes per row (all benchmarks and temperatures): drafting (N drafters cost
    N drafting passes) vs the verifying target forward, against plain decoding's forward; and the
    prompt's read-in per turn, which speculation cannot shorten (records from before it was kept
    show none)."""
    # per row: draft ms, verify ms, steps, prefill ms, turns with a prefill kept
    per: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0, 0.0, 0])
    for r in records:
        if r["row"].startswith("hf") or not r["target_steps"]:
            continue
        d = per[r["row"]]
        d[0], d[1] = d[0] + r["draft_ms"], d[1] + r["verify_ms"]
        d[2] += r["target_steps"] - len(r["text"])  # the prefill forward of each turn is not a step
        if "prefill_ms" in r:
            d[3], d[4] = d[3] + r["prefill_ms"], d[4] + len(r["text"])
    lines = [
        "**Time per target step** (ms; draft = all drafters of the row, verify = target forward + "
        "acceptance; prefill = the prompt's read-in and first token, per turn)",
        "",
        "| row | draft ms / step | verify ms / step | draft share | prefill ms / turn |",
        "|---|---|---|---|---|",
    ]
    for row, (draft, verify, steps, prefill, turns) in per.items():
        if steps:
            per_turn = _fmt(prefill / turns if turns else float("nan"), ".0f")
            lines.append(
                f"| {row} | {draft / steps:.1f} | {verify / steps:.1f} | "
                f"{draft / max(1e-9, draft + verify):.0%} | {per_turn} |"
            )
    return "\n".join(lines) if len(lines) > 4 else ""


def agreement_table(records: list[dict]) -> str:
    """Per row and temperature: the prompts whose replies (every turn) are plain decoding's text, the
    lossless receipt of a run. At T = 0 speculative decoding emits the target's greedy reply; at
    T > 0 a row of deterministic drafts samples plain's reply at the run's seed (`Draws`), where a
    tree's rows round as a plain step's do (bf16 on a CPU; in float32 rounding can move a draw at a
    token boundary), and sampled draft chains sample their own."""
    plain = {
        (r["benchmark"], r["prompt_id"], r["temperature"]): r["text"] for r in records if r["row"] == "plain"
    }
    counts: dict[tuple[str, float], list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        key = (r["benchmark"], r["prompt_id"], r["temperature"])
        if r["row"] == "plain" or r["row"].startswith("hf") or key not in plain:
            continue
        cell = counts[(r["row"], r["temperature"])]
        cell[0] += r["text"] == plain[key]
        cell[1] += 1
    if not counts:
        return ""
    temps = sorted({t for _, t in counts})
    lines = [
        "**Replies equal to plain decoding's** (prompts whose every turn is plain decoding's text, at the "
        "same seed: at T = 0 the target's greedy reply; at T > 0 rows of deterministic drafts sample "
        "plain's reply where a tree's rows round as plain steps do, and sampled draft chains their own)",
        "",
        "| row | " + " | ".join(f"T = {t:g}" for t in temps) + " |",
        "|---|" + "---|" * len(temps),
    ]
    for row in dict.fromkeys(r for r, _ in counts):
        cells = [counts.get((row, t)) for t in temps]
        lines.append(f"| {row} | " + " | ".join(f"{c[0]}/{c[1]}" if c else "–" for c in cells) + " |")
    return "\n".join(lines)


def category_table(records: list[dict]) -> str:
    """Is drafter accuracy a property of the task? tau per MT-Bench category and row (T = 0)."""
    per: dict[tuple[str, str], list[int]] = defaultdict(list)
    for r in records:
        if r["benchmark"] == "mt_bench" and r["temperature"] == 0 and r["accept_lengths"]:
            per[(r["row"], r["category"])] += r["accept_lengths"]
    if not per:
        return ""
    cats = sorted({c for _, c in per})
    rows = list(dict.fromkeys(r for r, _ in per))
    lines = [
        "**MT-Bench tau by category** (T = 0)",
        "",
        "| row | " + " | ".join(cats) + " |",
        "|" + "---|" * (len(cats) + 1),
    ]
    for row in rows:
        vals = [per.get((row, c)) for c in cats]
        lines.append(
            f"| {row} | "
            + " | ".join(_fmt(sum(a + 1 for a in v) / len(v), ".2f") if v else "" for v in vals)
            + " |"
        )
    return "\n".join(lines)


def router_table(records: list[dict]) -> str:
    """How each routed row split its steps among members and, at T = 0, how often it picked the
    member whose tree the target accepted most of (the oracle), with the tau an oracle would reach."""
    shares: dict[tuple[str, str], list[int]] = defaultdict(list)
    scored: dict[tuple[str, str], list[tuple[int, list[int]]]] = defaultdict(list)
    for r in records:
        if r.get("router_choices"):
            shares[(r["row"], r["benchmark"])] += r["router_choices"]
            if r.get("member_accepts"):
                scored[(r["row"], r["benchmark"])] += list(zip(r["router_choices"], r["member_accepts"]))
    if not shares:
        return ""
    lines = [
        "**Router** (share of steps routed to each member; accuracy = steps where it chose a member whose "
        "tree "
        "the target accepted most of, T = 0; oracle tau = tau of always choosing that member)",
        "",
        "| row | benchmark | shares | router accuracy | tau routed | tau oracle |",
        "|---|---|---|---|---|---|",
    ]
    for (row, bench), choices in sorted(shares.items()):
        members = row.split("=", 1)[1].split(",")
        text = ", ".join(f"{m}: {choices.count(i) / len(choices):.0%}" for i, m in enumerate(members))
        pairs = scored.get((row, bench), [])
        if pairs:
            accuracy = sum(acc[c] == max(acc) for c, acc in pairs) / len(pairs)
            routed = sum(acc[c] + 1 for c, acc in pairs) / len(pairs)
            oracle = sum(max(acc) + 1 for _, acc in pairs) / len(pairs)
            lines.append(f"| {row} | {bench} | {text} | {accuracy:.0%} | {routed:.2f} | {oracle:.2f} |")
        else:
            lines.append(f"| {row} | {bench} | {text} | – | – | – |")
    return "\n".join(lines)


def node_signals(records: list[dict]) -> dict[str, dict[str, np.ndarray]]:
    """Per row: confidence, entropy and accepted flag of every drafted node."""
    out: dict[str, dict[str, list]] = defaultdict(lambda: {"confidence": [], "entropy": [], "accepted": []})
    for r in records:
        for s in r.get("steps", []):
            d = out[r["row"]]
            d["confidence"] += s["confidence"]
            d["entropy"] += s["entropy"]
            d["accepted"] += s["node_accepted"]
    return {row: {k: np.asarray(v, dtype=float) for k, v in d.items()} for row, d in out.items()}


def signal_table(signals: dict) -> str:
    lines = [
        "**Confidence vs entropy** as signals of acceptance (AUROC, 0.5 = no signal)",
        "",
        "| row | drafted nodes | accepted | AUROC confidence | AUROC -entropy | mean entropy accepted / "
        "rejected |",
        "|---|---|---|---|---|---|",
    ]
    for row, d in signals.items():
        acc = d["accepted"].astype(bool)
        finite = np.isfinite(d["entropy"])
        if not finite.any() or acc.all() or not acc.any():
            continue
        a_conf = auroc(d["confidence"], acc)
        a_ent = auroc(-d["entropy"][finite], acc[finite])
        lines.append(
            f"| {row} | {len(acc)} | {acc.mean():.1%} | {a_conf:.3f} | {a_ent:.3f} | "
            f"{d['entropy'][finite & acc].mean():.2f} / {d['entropy'][finite & ~acc].mean():.2f} |"
        )
    return "\n".join(lines) if len(lines) > 4 else ""


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _bars(summary: dict, rows: list[str], metric: str, label: str, path: Path) -> Path:
    """One panel per temperature: each row's `metric` on each benchmark, beside 1.0 (plain decoding)."""
    import matplotlib.pyplot as plt

    temps = sorted({k[2] for k in summary})
    benches = list(dict.fromkeys(k[1] for k in summary))
    fig, axes = plt.subplots(1, len(temps), figsize=(5 + 3 * len(temps), 4.5), squeeze=False)
    width = 0.8 / max(1, len(rows))
    for ax, t in zip(axes[0], temps):
        for i, row in enumerate(rows):
            vals = [summary.get((row, b, t), {}).get(metric, np.nan) for b in benches]
            ax.bar(np.arange(len(benches)) + i * width, vals, width, label=row)
        ax.set_xticks(np.arange(len(benches)) + 0.4 - width / 2, benches)
        ax.set_title(f"T = {t:g}")
        ax.set_ylabel(label)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(label)
    return _save(fig, path)


def _accept_histogram(records: list[dict], rows: list[str], path: Path) -> Path:
    """How many tokens each greedy step emitted, row by row."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        acc = [
            a + 1 for r in records if r["row"] == row and r["temperature"] == 0 for a in r["accept_lengths"]
        ]
        if acc:
            ax.hist(acc, bins=np.arange(0.5, max(acc) + 1.5), histtype="step", density=True, label=row)
    ax.set_xlabel("tokens emitted per target forward (accepted + bonus)")
    ax.set_ylabel("share of steps")
    ax.set_title("Accepted length per step (T = 0)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _signal_histograms(signals: dict, path: Path) -> Path:
    """Confidence and entropy of drafted nodes, accepted against rejected, each with its AUROC."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    conf = np.concatenate([d["confidence"] for d in signals.values()])
    ent = np.concatenate([d["entropy"] for d in signals.values()])
    acc = np.concatenate([d["accepted"] for d in signals.values()]).astype(bool)
    for ax, values, name, score in (
        (axes[0], conf, "cumulative confidence exp(s)", conf),
        (axes[1], ent, "draft entropy at the parent (nats)", -ent),
    ):
        ok = np.isfinite(values)
        ax.hist(values[ok & acc], bins=40, alpha=0.6, density=True, label="accepted")
        ax.hist(values[ok & ~acc], bins=40, alpha=0.6, density=True, label="rejected")
        ax.set_xlabel(name)
        ax.set_ylabel("density")
        ax.set_title(f"AUROC {auroc(score[ok], acc[ok]):.3f}")
        ax.legend()
    fig.suptitle(f"Drafted nodes, all rows ({int(np.isfinite(ent).sum())} with entropy)")
    return _save(fig, path)


def plots(summary: dict, records: list[dict], signals: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    rows = [r for r in dict.fromkeys(k[0] for k in summary) if not r.startswith("hf")]
    written = [
        _bars(summary, rows, "tau", "acceptance length tau (tokens / target forward)", out_dir / "tau.png"),
        _bars(
            summary,
            rows,
            "speedup",
            "speed-up over plain decoding (tokens/s ratio)",
            out_dir / "speedup.png",
        ),
        _accept_histogram(records, rows, out_dir / "accept_hist.png"),
    ]
    if signals:
        written.append(_signal_histograms(signals, out_dir / "confidence_vs_entropy.png"))
    return written


def write_report(run_dir: str | Path, with_plots: bool = True) -> str:
    """Write report.md, summary.csv and PNG plots into the run folder; return the markdown."""
    run_dir = Path(run_dir)
    records = load_records(run_dir)
    summary = summarise(records)
    table, csv_rows = tables(summary)
    signals = node_signals(records)
    parts = [
        table,
        interval_table(summary),
        timing_table(records),
        agreement_table(records),
        category_table(records),
        router_table(records),
        signal_table(signals),
    ]
    markdown = "\n\n".join(p for p in parts if p) + "\n"
    (run_dir / "report.md").write_text(markdown)
    with open(run_dir / "summary.csv", "w", newline="") as f:
        csv.writer(f).writerows(csv_rows)
    if with_plots:
        plots(summary, records, signals, run_dir)
    return markdown
