"""Engine benchmark: every decoder on the same prompts, side by side in one run.

    python benchmarks/engine.py [--device auto|cpu|cuda] [--dtype auto|float32|bfloat16] [--threads 1]
        [--prompts 4] [--benchmarks gsm8k,mt_bench] [--max-new-tokens 64] [--temperature 0]
        [--emulate-avx2] [--pad-rows N] [--attention auto|model|float32|float64] [--ignore-eos] [--rows WORDS]
        [--drafters FOLDERS] [--vocabularies trained,context,whole] [--lookup] [--out FILE.json]

Prints, and writes as JSON with `--out`:
1. the target's forward cost by token count (the curve the tree budget weighs; 1000 / the 1-token
   cost is the limit line: the most plain decoding of this target could reach here);
2. one drafting step of a shipped drafter on each CPU kernel (plain matmul, oneDNN-packed, int8);
3. decoding: `transformers` generate, its prompt lookup, its static cache + torch.compile (with
   `--compile`; compiling can take minutes), taps plain decoding (through CUDA graphs and eagerly,
   on CUDA; padded to one row count and unpadded, in bf16: `taps.models.padded`; with and without
   the row floor, where the cost curve chose one: `TargetModel.set_row_floor`; on 1 thread, where
   `--threads` is more), the n-gram
   proposer, every shipped drafter, merged and route:confidence over eagle2-math + eagle2-chat, each
   under `--tree auto` (the budget; on a GPU whose verification is flat, the fixed 8/5/63 tree) and
   the fixed 8/5/24 tree (at T >= 1 the `[auto]` rows of single drafters draft sampled chains on a
   CPU, `--drafts auto`, and each also runs with top-k trees, `[auto top-k]`; at 0 < T < 1 the
   other way round, `[auto sampled]`; with `--lookup` each
   learned proposer's auto row runs again with prompt lookup merged into its tree, `[auto + lookup]`,
   at T > 0 a single drafter's also with a sampled chain, `[auto + lookup, sampled]`):
   tok/s, tau, ratio to HF generate and to taps plain, drafting / verification ms per step, verified
   nodes per step, and how many outputs equal taps plain decoding token for token (with the first
   divergence where one does not; at T > 0 too, where every taps row but sampled draft chains samples
   plain's tokens at the same seed), and each taps row's prefill time and speed-up after the prompt
   (what speculation can shorten).
`--emulate-avx2` reruns the benchmark as the CI-class CPU would run it (AVX2 only, no native bf16) on
a newer x86 CPU: ATen, oneDNN and MKL capped at AVX2, and bf16 treated as emulated. It is a proxy:
caches, memory bandwidth and clocks stay this machine's.
`--ignore-eos` makes every output run to --max-new-tokens. At T > 0 each row samples its own text,
and a row whose sample ends early pays its prompt's prefill over fewer tokens; equal lengths compare
like with like, as serving benchmarks do. taps keeps sampling past an EOS token (the target's
distribution is unchanged), HF `generate` is held to the length with `min_new_tokens`.
Speed-ups are ratios within this one run; nothing here is an assertion.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

from taps.cli import load_target_from_args
from taps.config import ATTENTION_CHOICES
from taps.data.benchmarks import load_benchmark
from taps.data.chat import encode_first_turn
from taps.device import machine_description, synchronize
from taps.drafters import drafter_path, make_strategy, shipped_drafters
from taps.errors import TapsError
from taps.eval.runner import LOOKUP_SUFFIX as LOOKUP  # as in eval rows: prompt lookup merged in
from taps.models import packed
from taps.models.graphs import accelerated
from taps.models.padded import invariant_rows
from taps.models.stacked import stack_drafters
from taps.spec.costs import measure_curve
from taps.spec.generate import GenerationConfig, SpeculativeGenerator
from taps.spec.propose import AUTO_SHAPE, SAMPLED_FROM, TreeDrafter, TreeShape

PAIR = "eagle2-math,eagle2-chat"


def decoder_rows(
    target,
    graphs: bool,
    compile_hf: bool,
    extra: tuple[str, ...] = (),
    temperature: float = 0.0,
    vocabularies: tuple[str, ...] = (),
    lookup: bool = False,
) -> list[tuple[str, str, str, TreeShape | None]]:
    """(row name, strategy, drafters, shape); strategy 'plain' / 'hf*' rows have no drafters. `extra`:
    drafter folders (say, one just trained) measured beside the shipped ones, each row named by its
    folder's name (by its whole path where that name is a shipped drafter's). At `temperature` >=
    SAMPLED_FROM the `[auto]` rows of single drafters draft sampled chains on a CPU (`--drafts auto`),
    so each also runs with top-k trees, row `[auto top-k]`; at 0 < T < SAMPLED_FROM they draft top-k
    trees and each also runs with sampled chains, row `[auto sampled]`. `lookup`: each learned
    proposer also with prompt lookup merged into its tree (`taps generate --lookup on`), rows
    `[auto + lookup]` (at T > 0 a single drafter's also drawing a sampled chain, `--drafts sampled`,
    `[auto + lookup, sampled]`).
    `vocabularies`
    (`TreeShape.vocabulary`): each learned drafter's rows again with each of these draft
    vocabularies, rows `[auto, V vocabulary]`."""
    rows = [("hf generate", "hf", "", None), ("hf prompt lookup", "hf-prompt-lookup", "", None)]
    if compile_hf:
        rows.append(("hf static cache + compile", "hf-compile", "", None))
    if graphs:
        rows.append(("taps plain (eager)", "plain-eager", "", None))
    rows.append(("taps plain", "plain", "", None))
    if invariant_rows(target.model) > 1:  # what padding every forward (bf16 exactness) costs plain decoding
        rows.append(("taps plain (unpadded)", "plain-unpadded", "", None))
    if target.model.row_floor > 1:  # what the row floor gains plain decoding
        rows.append(("taps plain (no row floor)", "plain-no-floor", "", None))
    if target.model.device.type == "cpu" and torch.get_num_threads() > 1:  # what the threads gain it
        rows.append(("taps plain (1 thread)", "plain-1-thread", "", None))
    shipped = shipped_drafters(target.name)
    proposers = [("single", "ngram"), *(("single", d) for d in [*shipped, *extra])]
    if all(d in shipped for d in PAIR.split(",")):
        proposers += [("merged", PAIR), ("route:confidence", PAIR)]
    for strategy, names in proposers:
        label = _row_label(names, shipped) if strategy == "single" else f"{strategy}={names}"
        rows += [
            (f"{label} [auto]", strategy, names, AUTO_SHAPE),
            (f"{label} [fixed 8/5/24]", strategy, names, TreeShape()),
        ]
        if temperature > 0 and strategy == "single" and names != "ngram":  # what `--drafts auto` did not pick
            other = "top-k" if temperature >= SAMPLED_FROM else "sampled"
            rows.append((f"{label} [auto {other}]", strategy, names, replace(AUTO_SHAPE, drafts=other)))
        if lookup and names != "ngram":
            rows.append((f"{label} [auto + lookup]", strategy + LOOKUP, names, AUTO_SHAPE))
            if (
                temperature > 0 and strategy == "single"
            ):  # a drawn chain beside the copies (`--drafts sampled`)
                drawn = replace(AUTO_SHAPE, drafts="sampled")
                rows.append((f"{label} [auto + lookup, sampled]", strategy + LOOKUP, names, drawn))
        for vocabulary in vocabularies if names != "ngram" else ():
            rows += [
                (
                    f"{label} [auto, {vocabulary} vocabulary]",
                    strategy,
                    names,
                    replace(AUTO_SHAPE, vocabulary=vocabulary),
                ),
                (
                    f"{label} [fixed 8/5/24, {vocabulary} vocabulary]",
                    strategy,
                    names,
                    TreeShape(vocabulary=vocabulary),
                ),
            ]
    # plain decoding again, at the other end of each prompt's round from "taps plain" (the order
    # reverses every prompt): identical to it, so its ratio is the run's own noise (on a shared 2-core
    # VM, +-10% per cell was seen), the yardstick for every other ratio in the table
    rows.append(("taps plain (control)", "plain", "", None))
    return rows


def _row_label(name: str, shipped: list[str]) -> str:
    folder = Path(name).name
    return name if folder in shipped and name != folder else folder


def hf_decoder(target, kind: str, temperature: float, ignore_eos: bool = False, top_p: float = 1.0):
    """A callable prompt_ids -> (tokens, seconds) over the `transformers` model of the same folder."""
    from transformers import AutoModelForCausalLM

    device = target.model.device
    model = AutoModelForCausalLM.from_pretrained(str(target.path), dtype=target.model.dtype).to(device).eval()
    kwargs = dict(eos_token_id=list(target.eos_token_ids), pad_token_id=target.eos_token_ids[0])
    kwargs |= (
        dict(do_sample=True, temperature=temperature, top_k=0, top_p=top_p)
        if temperature > 0
        else dict(do_sample=False)
    )
    if kind == "hf-prompt-lookup":
        kwargs["prompt_lookup_num_tokens"] = 10
    if kind == "hf-compile":
        model.generation_config.cache_implementation = "static"
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)

    @torch.inference_mode()
    def run(prompt: list[int], max_new: int) -> tuple[list[int], float]:
        start = time.perf_counter()
        length = dict(min_new_tokens=max_new) if ignore_eos else {}
        out = model.generate(
            torch.tensor([prompt], device=device), max_new_tokens=max_new, **kwargs, **length
        )
        synchronize(device)
        return out[0, len(prompt) :].tolist(), time.perf_counter() - start

    return run


def taps_decoder(
    target,
    strategy: str,
    names: str,
    shape: TreeShape | None,
    graphs: bool | None,
    temperature: float,
    ignore_eos: bool = False,
    top_p: float = 1.0,
):
    lookup = "on" if strategy.endswith(LOOKUP) else "off"  # rows `[auto + lookup]`: `--lookup on`
    strategy = strategy.removesuffix(LOOKUP)
    proposer = (
        None
        if strategy.startswith("plain")
        else make_strategy(strategy, names.split(","), target, shape, lookup=lookup)
    )
    gen = SpeculativeGenerator(
        target.model, proposer, graphs=graphs, pad_rows=0 if strategy == "plain-unpadded" else None
    )

    def run(prompt: list[int], max_new: int):
        cfg = GenerationConfig(
            max_new_tokens=max_new,
            temperature=temperature,
            top_p=top_p,
            eos_token_ids=() if ignore_eos else target.eos_token_ids,
        )
        floor, threads = target.model.row_floor, torch.get_num_threads()
        if strategy == "plain-no-floor":
            target.model.set_row_floor(1)
        if strategy == "plain-1-thread":
            torch.set_num_threads(1)
        try:
            out = gen.generate(prompt, cfg)
        finally:
            target.model.set_row_floor(floor)
            torch.set_num_threads(threads)
        return out.tokens, out.wall_ms / 1000, out.steps, out.prefill_ms / 1000

    return run


def measure_rows(
    decoders: dict, prompts: list[list[int]], max_new: int, partial: Path | None = None
) -> dict[str, dict]:
    """Every decoder on every prompt, round-robin (prompt by prompt, each decoder in turn), so that a
    slow spell of a shared machine slows every decoder alike instead of whichever row it hit. The
    order reverses from one prompt to the next: on the CI-class EPYC the machine drifted within each
    round, and with one fixed order the control row (plain decoding again, last in every round) read
    0.88x of the plain row; reversed on every other prompt, a steady drift averages out for every row.
    With `partial`, each row's tokens/s so far is rewritten there after every prompt: a run cut short
    (a lent GPU's time limit) still leaves its figures."""
    runs: dict[str, list] = {name: [] for name in decoders}
    failed: dict[str, dict] = {}
    for i, prompt in enumerate(prompts):
        order = [item for item in decoders.items() if item[0] not in failed]
        for name, run in order if i % 2 == 0 else reversed(order):
            try:
                runs[name].append(run(prompt, max_new))
            except Exception as exc:  # one row's failure (a lent GPU, one try) must not lose the rest
                failed[name] = row_error(name, exc)
        print(f"[engine] prompt {i + 1}/{len(prompts)} done by {len(order)} decoders", flush=True)
        if partial is not None:
            so_far = {name: summarize(done) for name, done in runs.items() if name not in failed}
            partial.write_text(result_json({"prompts_done": i + 1, "rows": so_far | failed}))
    return {name: summarize(done) for name, done in runs.items() if name not in failed} | failed


def result_json(result) -> str:
    """A run as compact JSON: every float to 6 significant digits (timings on these machines vary in
    the second or third), no indentation. Indented, at full precision, a run of 22 rows took ~250 kB,
    and the results are part of the repository, which has a size limit."""

    def rounded(value):
        if isinstance(value, float):
            return float(f"{value:.6g}")
        if isinstance(value, list | tuple):
            return [rounded(v) for v in value]
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        return value

    return json.dumps(rounded(result))


def row_error(name: str, exc: Exception) -> dict:
    """A row that did not run, reported (with its traceback on stderr) instead of ending the run."""
    traceback.print_exc()
    print(f"[engine] {name} did not run: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    return {"error": f"{type(exc).__name__}: {exc}"[:300]}


def summarize(done: list[tuple]) -> dict:
    """(tokens, seconds[, steps, prefill seconds]) per prompt -> one row of figures. `decode_tok_s`
    leaves the prompt out: the tokens after the prefill's first one over the time after it, the part
    speculation can speed up (on long prompts the prefill is a large share of the wall time)."""
    outputs, seconds = [d[0] for d in done], [d[1] for d in done]
    steps = [s for d in done if len(d) > 2 for s in d[2]]
    n_tokens = sum(map(len, outputs))
    row = {"tok_s": n_tokens / sum(seconds), "tokens": n_tokens, "seconds": seconds, "outputs": outputs}
    if done and len(done[0]) > 3:
        prefill = [d[3] for d in done]
        after = sum(s - p for s, p in zip(seconds, prefill))
        row |= {"prefill_s": prefill, "decode_tok_s": (n_tokens - len(done)) / after if after > 0 else 0.0}
    if steps:
        row |= {
            "tau": sum(s.accepted + 1 for s in steps) / len(steps),
            "draft_ms": sum(s.draft_ms for s in steps) / len(steps),
            "verify_ms": sum(s.verify_ms for s in steps) / len(steps),
            "nodes": sum(s.tree_size for s in steps) / len(steps),
            "plain_steps": sum(s.tree_size == 0 for s in steps) / len(steps),
        }
    return row


def print_by_benchmark(results: dict[str, dict], benchmarks: list[str]) -> None:
    """tok/s per benchmark, as a ratio to taps plain decoding on the same prompts."""
    names = list(dict.fromkeys(benchmarks))

    def tok_s(row: dict, bench: str) -> float:
        picked = [i for i, b in enumerate(benchmarks) if b == bench]
        return sum(len(row["outputs"][i]) for i in picked) / sum(row["seconds"][i] for i in picked)

    plain = results["taps plain"]
    print(f"\n| decoder: vs taps plain by benchmark | {' | '.join(names)} |\n|---|{'---|' * len(names)}")
    for name, row in results.items():
        if "error" not in row:
            ratios = " | ".join(f"{tok_s(row, b) / tok_s(plain, b):.2f}x" for b in names)
            print(f"| {name} | {ratios} |")


def first_divergence(a: list[int], b: list[int]) -> int | None:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b))
    )


def draft_step_ms(target, drafter_name: str) -> dict[str, float]:
    """One fixed 8/5/24 drafting step of a shipped drafter on each matmul kernel (median of 10)."""
    from taps.drafters import make_proposer

    drafter = make_proposer(drafter_name, target, TreeShape()).drafter
    kernels = {"plain matmul": None}
    if target.model.device.type == "cpu":
        kernels |= {k.name: k for k in (packed.ONEDNN, packed.INT8) if k.available}
    ctx = torch.randint(0, 1000, (128,), device=target.model.device)
    feats = target.model(ctx, target.model.new_cache())
    out = {}
    for name, kernel in kernels.items():
        stacked = stack_drafters([drafter])
        if kernel is not None:
            stacked.pack_for_cpu(kernel)
        trees = TreeDrafter([drafter], TreeShape(), [0], stacked=stacked)
        trees.propose_all(ctx, feats)
        times = []
        for _ in range(11):
            start = time.perf_counter()
            trees.propose_all(ctx[-1:], feats[-1:])
            synchronize(target.model.device)
            times.append((time.perf_counter() - start) * 1000)
        out[f"{name} ({drafter.dtype})"] = statistics.median(times[1:])
    return out


AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def emulate_avx2() -> None:
    """Cap torch's CPU kernels at AVX2 (read at start-up: re-exec once); report no native bf16."""
    import taps.device

    if any(os.environ.get(k) != v for k, v in AVX2_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], os.environ | AVX2_ENV)
    flags = taps.device.cpu_flags() - {"avx512_bf16", "amx_bf16"}
    taps.device.cpu_flags = lambda: flags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pad-rows", type=int, default=None, help="as `taps generate --pad-rows`")
    ap.add_argument(
        "--attention", default="auto", choices=list(ATTENTION_CHOICES), help="as `taps generate --attention`"
    )
    ap.add_argument("--prompts", type=int, default=4, help="prompts per benchmark")
    ap.add_argument("--benchmarks", default="gsm8k,mt_bench")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="> 0: outputs are samples (seed 0); taps rows are still compared with taps plain's",
    )
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling at T > 0 (every row)")
    ap.add_argument("--emulate-avx2", action="store_true", help="run as an AVX2-only CPU without native bf16")
    ap.add_argument(
        "--ignore-eos", action="store_true", help="every output runs to --max-new-tokens (see the header)"
    )
    ap.add_argument(
        "--compile", action="store_true", help="add HF generate with a static cache + torch.compile"
    )
    ap.add_argument("--data-dir", default=None)
    ap.add_argument(
        "--rows",
        default="",
        help="only proposer rows whose name contains one of these words (comma-separated)",
    )
    ap.add_argument(
        "--drafters",
        default="",
        help="drafter folders to measure beside the shipped drafters (comma-separated; a row is named "
        "by its folder, by its path where that name is a shipped drafter's)",
    )
    ap.add_argument(
        "--vocabularies",
        default="",
        help="also run each learned drafter's rows with these draft vocabularies (comma-separated: "
        "trained, context, whole; as `taps generate --vocabulary`)",
    )
    ap.add_argument(
        "--lookup",
        action="store_true",
        help="also run each learned proposer with prompt lookup merged in (`--lookup on`), rows "
        "`[auto + lookup]`",
    )
    ap.add_argument("--out", default=None, help="write the figures (and every output) as JSON here")
    args = ap.parse_args()
    if args.emulate_avx2:
        emulate_avx2()
    target = load_target_from_args(args)
    extra = tuple(d for d in args.drafters.split(",") if d)
    for folder in extra:  # a wrong path fails now, in one line, before anything is measured
        drafter_path(folder, target.name)
    device, graphs = target.model.device, target.model.device.type == "cuda"
    meta = {
        "target": args.target,
        "device": str(device),
        "machine": machine_description(device),
        "dtype": str(target.model.dtype),
        "torch": torch.__version__,
        "threads": args.threads,
        "pad_rows": invariant_rows(target.model),
        "attention": str(accelerated(target.model).attention_dtype),  # `taps.models.padded.attention_dtype`
        "row_floor": target.model.row_floor,  # `TargetModel.set_row_floor`
        "benchmarks": args.benchmarks,
        "prompts_per_benchmark": args.prompts,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "emulated_avx2": args.emulate_avx2,
        "ignore_eos": args.ignore_eos,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(
        f"target {args.target} ({target.model.dtype}, attending in {meta['attention']}) on "
        f"{meta['machine']}, torch {torch.__version__}, "
        f"{args.threads} thread(s)\n"
    )

    try:
        curve = measure_curve(accelerated(target.model))  # through the CUDA graphs on a GPU
    except Exception as exc:  # graphs that fail to capture: say so, and measure the eager path
        row_error("the cost curve through graphs", exc)
        curve = measure_curve(accelerated(target.model, graphs=False))
    print("| tree tokens | target forward ms (median) | fitted non-decreasing | vs 1 token |")
    print("|---|---|---|---|")
    for n, raw, ms in zip(curve.sizes, curve.measured, curve.ms):
        print(f"| {n} | {raw:.2f} | {ms:.2f} | {raw / curve.measured[0]:.2f}x |")
    print(f"\nlimit of plain decoding: {1000 / curve.measured[0]:.1f} tok/s (1000 / the 1-token forward)")

    drafts = {}
    if "eagle2-math" in shipped_drafters(target.name):
        try:
            drafts = draft_step_ms(target, "eagle2-math")
        except Exception as exc:  # reported; the decoding rows still run
            row_error("the drafting-step timing", exc)
    if drafts:
        print("\n| eagle2-math drafting step (fixed 8/5/24) | ms |\n|---|---|")
        for kernel, ms in drafts.items():
            print(f"| {kernel} | {ms:.1f} |")

    items = [
        p
        for b in args.benchmarks.split(",")
        for p in load_benchmark(b, args.data_dir, limit=args.prompts, seed=0)
    ]
    prompts = [encode_first_turn(target.tokenizer, p) for p in items]
    wanted = [w for w in args.rows.split(",") if w]
    decoders, failed = {}, {}
    vocabularies = tuple(v for v in args.vocabularies.split(",") if v)
    for vocabulary in vocabularies:  # a typo fails now, before anything is measured
        TreeShape(vocabulary=vocabulary)
    rows = decoder_rows(target, graphs, args.compile, extra, args.temperature, vocabularies, args.lookup)
    for name, strategy, names, shape in rows:
        if wanted and not any(w in name for w in wanted) and not strategy.startswith(("hf", "plain")):
            continue
        try:
            if strategy.startswith("hf"):
                run = hf_decoder(target, strategy, args.temperature, args.ignore_eos, args.top_p)
            else:
                use_graphs = False if strategy == "plain-eager" else None
                run = taps_decoder(
                    target, strategy, names, shape, use_graphs, args.temperature, args.ignore_eos, args.top_p
                )
            run(prompts[0][:16], 8)  # warm-up: graph capture, compilation, first-call allocations
            decoders[name] = run
        except Exception as exc:  # a baseline that does not run here (e.g. compile) is reported, not fatal
            failed[name] = row_error(name, exc)
    partial = Path(args.out).with_suffix(".partial.json") if args.out else None
    if partial is not None:
        partial.parent.mkdir(parents=True, exist_ok=True)
    results = measure_rows(decoders, prompts, args.max_new_tokens, partial) | failed

    base = next((n for n in ("taps plain", "taps plain (eager)") if "error" not in results.get(n, {})), None)
    if base is None:
        raise TapsError(f"plain decoding did not run: {results.get('taps plain', {}).get('error')}")
    if base != "taps plain":  # the graphs failed: ratios against the eager path, said in the table
        print(f"\n[engine] ratios 'vs taps plain' are against {base!r}: 'taps plain' did not run")
        results["taps plain"] = results[base]
    hf = results.get("hf generate", {})
    hf = hf if "error" not in hf else {"tok_s": float("nan")}
    plain = results["taps plain"]
    print(
        f"\n| decoder ({len(prompts)} prompts: {args.benchmarks}, {args.max_new_tokens} new tokens max) "
        "| tok/s | vs HF generate | vs taps plain | tau | nodes / step | plain steps | draft ms / step "
        "| verify ms / step | prefill s | after the prompt: vs taps plain | output == taps plain |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, row in results.items():
        if "error" in row:
            print(f"| {name} | did not run: {row['error']} | | | | | | | | | | |")
            continue
        # at T > 0 taps draws each token at its place (`Draws`): its rows sample plain's tokens, all but
        # sampled draft chains; HF samples with its own generator
        if args.temperature == 0 or not name.startswith("hf"):
            diverged = [first_divergence(a, b) for a, b in zip(row["outputs"], plain["outputs"])]
            row["same_as_plain"], row["first_divergence"] = sum(d is None for d in diverged), diverged
        same = f"{row['same_as_plain']}/{len(prompts)}" if "same_as_plain" in row else "–"
        row["vs_hf"], row["vs_plain"] = row["tok_s"] / hf["tok_s"], row["tok_s"] / plain["tok_s"]
        extra = " | ".join(
            f"{row[k]:.2f}" if k in row else "–"
            for k in ("tau", "nodes", "plain_steps", "draft_ms", "verify_ms")
        )
        if "decode_tok_s" in row and plain.get("decode_tok_s"):
            row["decode_vs_plain"] = row["decode_tok_s"] / plain["decode_tok_s"]
            prefill = f"{statistics.mean(row['prefill_s']):.2f} | {row['decode_vs_plain']:.2f}x"
        else:
            prefill = "– | –"
        print(
            f"| {name} | {row['tok_s']:.1f} | {row['vs_hf']:.2f}x | {row['vs_plain']:.2f}x | {extra} | "
            f"{prefill} | {same} |"
        )
    print_by_benchmark(results, [p.benchmark for p in items])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            result_json(
                {
                    "meta": meta,
                    "curve": dict(zip(map(str, curve.sizes), curve.measured)),
                    "limit_tok_s": 1000 / curve.measured[0],
                    "draft_step_ms": drafts,
                    "rows": results,
                }
            )
        )
        if partial is not None:
            partial.unlink(missing_ok=True)  # the whole run is in --out now
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except TapsError as exc:  # bad input (a drafter path, a device, a benchmark): one line, not a traceback
        sys.exit(f"engine.py: {exc}")
