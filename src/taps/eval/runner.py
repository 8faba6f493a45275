"""The evaluation grid: rows (decoders) x benchmarks x temperatures -> per-prompt JSONL records.

A row is `plain` (our target alone: the 1.0x line), a `transformers` baseline (`hf`,
`hf-prompt-lookup`, `hf-assisted`), a single proposer (`ngram`, a drafter name or folder) or a
combination `STRATEGY=d1,d2,...` (e.g. `merged=eagle2-math,eagle2-chat`). Each finished cell is
written atomically to its own file, so an interrupted run resumes by skipping finished cells.
Multi-turn prompts (MT-Bench) are asked turn by turn, the second after the model's own answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from taps.data.benchmarks import load_benchmark
from taps.data.chat import encode_chat
from taps.device import machine_description
from taps.errors import TapsError
from taps.eval.baselines import HF_BASELINES, HFDecoder
from taps.files import write_json_atomic, write_text_atomic
from taps.models.graphs import accelerated
from taps.models.padded import invariant_rows
from taps.spec.combine import STRATEGIES, greedy_match
from taps.spec.generate import Generation, GenerationConfig, SpeculativeGenerator, StepRecord
from taps.spec.propose import TreeShape


@dataclass(frozen=True)
class Row:
    spec: str  # as given on the command line; also the row's name in tables
    kind: str  # "plain" | an HF baseline | a strategy from STRATEGIES
    drafters: tuple[str, ...] = ()
    lookup: bool = False  # prompt lookup merged into the drafters' tree (`--lookup on`)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.spec)


LOOKUP_SUFFIX = "+lookup"


def parse_row(spec: str) -> Row:
    """`plain`, an HF baseline, a drafter name, or STRATEGY=a,b; a drafter row with the suffix
    `+lookup` has prompt lookup merged into its tree (`taps generate --lookup on`)."""
    spec = spec.strip()
    if not spec:
        raise TapsError("empty row name in --rows")
    if spec.endswith(LOOKUP_SUFFIX):
        row = parse_row(spec.removesuffix(LOOKUP_SUFFIX))
        if row.kind == "plain" or row.kind in HF_BASELINES or "ngram" in row.drafters:
            raise TapsError(
                f"{spec!r}: {LOOKUP_SUFFIX} joins learned drafters; {row.spec!r} has none to join"
            )
        return Row(spec, row.kind, row.drafters, lookup=True)
    if spec == "plain" or spec in HF_BASELINES:
        return Row(spec, spec)
    if "=" in spec:
        strategy, names = spec.split("=", 1)
        if strategy not in STRATEGIES or strategy == "single":
            raise TapsError(
                f"unknown strategy {strategy!r} in {spec!r}: use one of {', '.join(STRATEGIES[1:])}"
            )
        drafters = tuple(n for n in names.split(",") if n)
        if len(drafters) < 2:
            raise TapsError(f"{spec!r} combines fewer than two drafters")
        return Row(spec, strategy, drafters)
    return Row(spec, "single", (spec,))


@dataclass
class PromptRecord:
    prompt_id: str
    benchmark: str
    category: str | None
    row: str
    temperature: float
    new_tokens: int = 0
    target_steps: int = 0
    wall_ms: float = 0.0
    draft_ms: float = 0.0
    verify_ms: float = 0.0
    prefill_ms: float = 0.0  # each turn's prompt read-in and first token (taps rows), summed over turns
    accept_lengths: list[int] = field(default_factory=list)
    router_choices: list[int] = field(default_factory=list)
    # T = 0, combined rows: each member's would-be accepts per step
    member_accepts: list[list[int]] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)  # per step: node confidence / entropy / accepted / source
    text: list[str] = field(default_factory=list)

    @property
    def tau(self) -> float | None:
        if not self.accept_lengths:
            return None if self.target_steps == 0 else 1.0
        return sum(a + 1 for a in self.accept_lengths) / len(self.accept_lengths)

    def to_json(self) -> dict:
        return asdict(self) | {"tau": self.tau}


class Decoder:
    """Uniform `decode(ids, config) -> Generation` over our engine and the HF baselines."""

    def __init__(self, row: Row, target, shape: TreeShape, assistant=None):
        from taps.drafters import make_strategy

        self.row, self.hf, self.proposer = row, None, None
        if row.kind in HF_BASELINES:
            self.hf = HFDecoder(row.kind, target, assistant)
        elif row.kind != "plain":
            lookup = "on" if row.lookup else "off"
            self.proposer = make_strategy(row.kind, list(row.drafters), target, shape, lookup=lookup)
        self.engine = SpeculativeGenerator(target.model, self.proposer)
        self.tokenizer = target.tokenizer

    def decode(
        self, ids: list[int], config: GenerationConfig
    ) -> tuple[Generation, list[int], list[list[int]]]:
        """The generation, the router's choice per step, and (at T = 0, for combined rows) how many
        drafted tokens each member's tree would have had accepted at each step."""
        if self.hf is not None:
            out = self.hf.generate(ids, config.max_new_tokens, config.temperature, config.seed)
            return Generation(out.tokens, [], 0.0, out.wall_ms, "hf", out.text), [], []
        out = self.engine.generate(ids, config, self.tokenizer)
        # a router's choice per drafting step (under the tree budget too: `BudgetedProposer.choices`)
        choices = list(getattr(self.proposer, "choices", []))
        history = getattr(self.proposer, "history", None)
        if not history or config.temperature > 0:
            return out, choices, []
        accepts, root = [], 0  # out.tokens[root] is the root each step drafted under
        for trees, step in zip(history, out.steps):
            if trees is not None:  # None: a plain step under the tree budget (nothing drafted)
                accepts.append([greedy_match(t, out.tokens[root + 1 :]) for t in trees])
            root += step.accepted + 1
        return out, choices, accepts


def run_prompt(decoder: Decoder, prompt, config: GenerationConfig, keep_steps: bool = True) -> PromptRecord:
    rec = PromptRecord(prompt.id, prompt.benchmark, prompt.category, decoder.row.spec, config.temperature)
    messages: list[dict[str, str]] = []
    for turn in prompt.turns:
        messages.append({"role": "user", "content": turn})
        out, choices, member_accepts = decoder.decode(encode_chat(decoder.tokenizer, messages), config)
        messages.append({"role": "assistant", "content": out.text or ""})
        rec.text.append(out.text or "")
        rec.new_tokens += len(out.tokens)
        rec.wall_ms += out.wall_ms
        rec.router_choices += choices
        rec.member_accepts += member_accepts
        if decoder.hf is None:
            rec.target_steps += len(out.steps) + 1  # + the prefill forward
            rec.draft_ms += sum(s.draft_ms for s in out.steps)
            rec.verify_ms += sum(s.verify_ms for s in out.steps)
            rec.prefill_ms += out.prefill_ms
            if decoder.proposer is not None:
                rec.accept_lengths += [s.accepted for s in out.steps]
                if keep_steps:
                    rec.steps += [_step_json(s) for s in out.steps]
    return rec


def _step_json(s: StepRecord) -> dict:
    return {
        "accepted": s.accepted,
        "confidence": [round(c, 5) for c in s.node_confidence],
        "entropy": [round(e, 4) for e in s.node_entropy],
        "node_accepted": s.node_accepted,
        "source": s.node_source,
        "accepted_sources": s.accepted_sources,
    }


@dataclass
class GridConfig:
    rows: list[str]
    benchmarks: list[str]
    temperatures: list[float]
    prompts: int | None = 10  # per benchmark; None = all
    max_new_tokens: int = 128
    seed: int = 0
    data_dir: str | None = None
    shape: TreeShape = field(default_factory=TreeShape)
    threads: int = 1


def cell_path(out_dir: Path, row: Row, benchmark: str, temperature: float) -> Path:
    bench = re.sub(r"[^A-Za-z0-9_.-]+", "_", benchmark)
    return out_dir / "records" / f"{row.slug}__{bench}__T{temperature:g}.jsonl"


def _run_meta(target, grid: GridConfig) -> dict:
    """What a run folder's `meta.json` records: the grid and everything its speeds and outputs depend
    on (machine, torch, dtype, padding, attention precision)."""
    return {
        "target": target.name,
        "threads": grid.threads,
        "torch": torch.__version__,
        "device": str(target.model.device),
        "machine": machine_description(target.model.device),
        "dtype": str(target.model.dtype),
        "pad_rows": invariant_rows(target.model),
        "attention": str(accelerated(target.model).attention_dtype),
        "row_floor": target.model.row_floor,  # speed only: outputs do not change
        "drafters": drafter_digests(grid.rows, target.name),
        "grid": asdict(grid) | {"shape": asdict(grid.shape)},
    }


def drafter_digests(rows: list[str], target_name: str) -> dict[str, str]:
    """A short hash of the weights of every drafter the rows name: a drafter retrained, or a shipped
    one updated, under the same name must not resume a run folder whose cells it did not draft."""
    from taps.drafters import drafter_path
    from taps.models.catalog import file_sha256

    names = dict.fromkeys(n for r in rows for n in parse_row(r).drafters if n != "ngram")
    digests = {}
    for name in names:
        weights = drafter_path(name, target_name) / "model.safetensors"
        if weights.is_file():  # else loading the drafter says what is wrong with the folder
            digests[name] = file_sha256(weights)[:16]
    return digests


def run_grid(target, grid: GridConfig, out_dir: str | Path, assistant=None) -> Path:
    """Every (row, benchmark, temperature) cell not yet finished in `out_dir`. Within a benchmark and
    temperature the rows take turns prompt by prompt, so that their speed ratios are measured side by
    side; each cell's file is written, complete, once its prompts are done (resuming redoes at most
    the unfinished cells)."""
    out_dir = Path(out_dir)
    rows = [parse_row(r) for r in grid.rows]
    prompts = {
        b: load_benchmark(b, grid.data_dir, limit=grid.prompts, seed=grid.seed if grid.prompts else None)
        for b in grid.benchmarks
    }
    meta = _resumable_meta(out_dir, _run_meta(target, grid))
    todo = [
        (r, b, t)
        for r in rows
        for b in grid.benchmarks
        for t in grid.temperatures
        if not cell_path(out_dir, r, b, t).is_file()
    ]
    configs = {  # checked before anything runs or is written: a bad one must not wait for the others
        t: GenerationConfig(grid.max_new_tokens, t, 1.0, grid.seed, target.eos_token_ids)
        for t in grid.temperatures
    }
    # made once per row (drafters loaded and checked against the target, costs measured), kept across
    # cells; all of them before the run folder is written, so that a misspelt row leaves nothing behind
    decoders = {
        r.spec: Decoder(r, target, grid.shape, assistant) for r in dict.fromkeys(r for r, _, _ in todo)
    }
    (out_dir / "records").mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "meta.json", meta)
    skipped = len(rows) * len(grid.benchmarks) * len(grid.temperatures) - len(todo)
    if skipped:
        print(f"[eval] {skipped} finished cells kept, {len(todo)} to run", flush=True)
    bar = tqdm(
        total=sum(len(prompts[b]) for _, b, _ in todo),
        unit="prompt",
        desc="eval",
        dynamic_ncols=True,
        mininterval=20,
    )
    groups: dict[tuple[str, float], list] = {}
    for row, bench, temp in todo:
        groups.setdefault((bench, temp), []).append(row)
    for (bench, temp), group in groups.items():
        config = configs[temp]
        records: dict[str, list] = {row.spec: [] for row in group}
        for prompt in prompts[bench]:
            for row in group:  # round-robin: a slow spell of a shared machine slows every row alike
                records[row.spec].append(run_prompt(decoders[row.spec], prompt, config))
                bar.update(1)
        for row in group:
            _write_cell(
                cell_path(out_dir, row, bench, temp), records[row.spec], f"{row.spec} | {bench} | T={temp:g}"
            )
    bar.close()
    return out_dir


def pooled_tau(accept_lengths: list[int]) -> float:
    """A cell's tau: tokens per verifying target forward over all its steps, whatever the prompt (the
    mean of per-prompt taus weighs a short reply like a long one, and reads higher)."""
    return sum(a + 1 for a in accept_lengths) / len(accept_lengths)


def _write_cell(path: Path, records: list, label: str) -> None:
    """One finished cell's records (atomically: a cell file is always complete), and its summary line,
    whose tau is the one the report's tables give (`pooled_tau`)."""
    write_text_atomic(path, "".join(json.dumps(r.to_json()) + "\n" for r in records))
    accepts = [a for r in records for a in r.accept_lengths]
    tps = sum(r.new_tokens for r in records) / max(1e-9, sum(r.wall_ms for r in records) / 1000)
    tau_text = f"tau {pooled_tau(accepts):.2f}, " if accepts else ""
    print(f"[eval] {label}: {tau_text}{tps:.1f} tok/s", flush=True)


# What a finished cell's records depend on besides its row, benchmark and temperature.
_CELL_SETTINGS = ("prompts", "max_new_tokens", "seed", "shape")


def _resumable_meta(out_dir: Path, meta: dict) -> dict:
    """Refuse to resume a run folder made with other settings or other weights of a drafter (its
    finished cells would be mixed into this run's tables); otherwise list the union of both runs'
    rows, benchmarks and temperatures (and drafters)."""
    path = out_dir / "meta.json"
    if not path.is_file():
        return meta
    try:
        old = json.loads(path.read_text())
        old_grid = old["grid"]
    except (ValueError, KeyError, TypeError) as exc:
        raise TapsError(
            f"{path} is not a taps eval meta file ({exc}); pass a new --out or delete {out_dir}"
        ) from exc
    old.setdefault("device", "cpu")  # runs from before --device ran on the CPU
    for key in ("dtype", "pad_rows"):  # runs from before these were recorded: not comparable, trusted
        old.setdefault(key, meta[key])
    # before 2026-12-05 a bf16 target attended in bf16 on a CPU: those runs do not resume in float64
    old.setdefault("attention", old["dtype"] if old["device"] == "cpu" else meta["attention"])
    if isinstance(old_grid.get("shape"), dict):  # runs from before --vocabulary scored the trained one
        old_grid["shape"].setdefault("vocabulary", "auto")
        old_grid["shape"].setdefault("drafts", "top-k")  # and before --drafts sampled
    changed = [
        f"{k} {old.get(k)} -> {meta[k]}"
        for k in ("target", "threads", "device", "dtype", "pad_rows", "attention")
        if old.get(k) != meta[k]
    ]
    changed += [
        f"{k} {old_grid.get(k)} -> {meta['grid'][k]}"
        for k in _CELL_SETTINGS
        if old_grid.get(k) != meta["grid"][k]
    ]
    old_drafters = old.get("drafters", {})  # runs from before they were recorded: trusted
    changed += [
        f"drafter {name}: other weights"
        for name, digest in meta.get("drafters", {}).items()
        if old_drafters.get(name, digest) != digest
    ]
    if changed:
        raise TapsError(
            f"{out_dir} holds a run made with other settings ({'; '.join(changed)}); "
            "pass a new --out, or delete the folder to start over"
        )
    for key in ("rows", "benchmarks", "temperatures"):
        meta["grid"][key] = list(dict.fromkeys([*old_grid.get(key, []), *meta["grid"][key]]))
    meta["drafters"] = old_drafters | meta.get("drafters", {})
    return meta


def load_records(out_dir: str | Path) -> list[dict]:
    files = sorted((Path(out_dir) / "records").glob("*.jsonl"))
    if not files:
        raise TapsError(f"{out_dir} holds no eval records; run `taps eval --out {out_dir}` first")
    records = []
    for f in files:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise TapsError(
                    f"{f} line {n} is corrupt ({exc.msg}); delete that file and rerun `taps eval` to redo "
                    "the cell"
                ) from exc
    return records
