"""Drafter training loop (EAGLE-2 or HASS), built on `accelerate`: on cached target features (offline,
for CPUs) or on features the frozen target makes inside the loop (online, for GPUs).

`accelerate launch --num_processes N -m taps.cli train ...` spreads it over N GPUs (each process
trains on every N-th batch); on a CPU it runs as is. State
(drafter, optimizer, schedule, data position, RNG) is checkpointed atomically every N steps and
`resume=True` continues an interrupted run exactly where it stopped.
"""

from __future__ import annotations

import functools
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from taps.errors import TapsError
from taps.files import write_json_atomic
from taps.models.checkpoint import check_fingerprint, load_drafter, read_config, save_drafter
from taps.models.drafter import Drafter, DrafterConfig
from taps.models.layers import CAUSAL
from taps.models.packed import whole_matmuls
from taps.training.features import Sequence, load_sequences
from taps.training.losses import LossWeights, drafter_loss, top1_accuracy
from taps.training.profile import phase


@dataclass
class TrainConfig:
    method: str = "eagle2"  # "eagle2" | "hass"
    epochs: float = 1.0
    batch_tokens: int = 8192
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50  # at most a quarter of the run (see `effective_warmup`)
    grad_clip: float = 0.5
    noise: float = 0.2  # uniform feature noise width, as in EAGLE
    draft_vocab_size: int | None = 8192
    align_steps: int = 3  # HASS harmonized context alignment steps (1 = none)
    topk_weight: float = 1.0  # HASS top-K distillation weight
    topk: int = 10
    checkpoint_every: int = 200
    seed: int = 0
    max_steps: int | None = None  # stop early (e.g. to split a run over sessions)
    # fit the run to this many seconds of training: the schedule is cut to the steps that fit, at the
    # rate of steps FIT_SKIP..FIT_AFTER (a lent GPU is lent by the minute)
    time_limit_s: float | None = None
    # accelerate's setting: "bf16" autocast, "no", or "auto" = bf16 only where the hardware computes it
    # natively (GPUs, avx512_bf16 / AMX CPUs); emulated bf16 made a training step ~4x slower on an AVX2 CPU
    mixed_precision: str = "auto"
    init: str | None = None  # a trained drafter's folder to go on from (`initial_drafter`)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in ("eagle2", "hass"):
            raise TapsError(f"unknown method {self.method!r}: use eagle2 or hass")
        if self.epochs <= 0 or self.batch_tokens <= 0 or self.lr <= 0:
            raise TapsError("epochs, batch_tokens and lr must be > 0")
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            raise TapsError(f"--time-limit must be > 0 seconds, got {self.time_limit_s}")

    @property
    def weights(self) -> LossWeights:
        return LossWeights(topk=self.topk_weight if self.method == "hass" else 0.0, k=self.topk)

    @property
    def steps_of_alignment(self) -> int:
        return self.align_steps if self.method == "hass" else 1


def draft_vocabulary(
    seqs: list[Sequence], vocab_size: int, size: int | None, always: tuple[int, ...] = ()
) -> torch.Tensor:
    """The `size` most frequent target-side tokens of the corpus (plus `always`), sorted: the d2t map."""
    if size is None or size >= vocab_size:
        return torch.arange(vocab_size)
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for s in seqs:
        counts += torch.bincount(s.tokens[s.loss_mask], minlength=vocab_size)
    counts[list(always)] = counts.max() + 1
    return counts.topk(size).indices.sort().values


def make_batches(seqs: list[Sequence], batch_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """Length-bucketed batches (little padding) in an order fixed by (seed, epoch)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].tokens))
    batches, current, longest = [], [], 0
    for i in order:
        n = len(seqs[i].tokens)
        if current and max(longest, n) * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        batches.append(current)
    random.Random(seed * 1000 + epoch).shuffle(batches)
    return batches


def collate(seqs: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Right-padded tokens, features (None for online sequences) and loss masks of a batch."""
    n = max(len(s.tokens) for s in seqs)
    tokens = torch.zeros(len(seqs), n, dtype=torch.long)
    mask = torch.zeros(len(seqs), n, dtype=torch.bool)
    for b, s in enumerate(seqs):
        tokens[b, : len(s.tokens)], mask[b, : len(s.tokens)] = s.tokens, s.loss_mask
    if seqs[0].features is None:
        return tokens, None, mask
    feats = torch.zeros(len(seqs), n, seqs[0].features.shape[-1], dtype=seqs[0].features.dtype)
    for b, s in enumerate(seqs):
        feats[b, : len(s.tokens)] = s.features
    return tokens, feats, mask


def alignment_mask(n: int, steps: int, device: torch.device | None = None) -> torch.Tensor | str:
    """HASS attention over `steps` stacked copies of the sequence: a query of step a at position t sees
    step-1 keys at s <= t - a + 1 and the key of step b at s = t - a + b (its own draft ancestors).

    Built on `device`: the mask is (steps x n)^2 (37M entries at n = 2048), and a batch's length
    changes from batch to batch, so most steps need a new one: built on the host it took 120 ms at
    n = 2048 on a CPU core, and then a copy to the GPU, for each of the two masks a 3-step HASS step
    uses (HASS trained online at 92-111k tokens/s on an H200, against 143-154k for EAGLE-2)."""
    if steps == 1:
        return CAUSAL
    t = torch.arange(n, device=device)
    mask = torch.zeros(steps * n, steps * n, dtype=torch.bool, device=device)
    for a in range(1, steps + 1):
        rows = slice((a - 1) * n, a * n)
        mask[rows, :n] = t[None, :] <= (t[:, None] - a + 1)
        for b in range(2, a + 1):
            mask[rows, (b - 1) * n : b * n] = t[None, :] == (t[:, None] - a + b)
    return mask


def training_loss(
    drafter: Drafter, head: torch.Tensor, batch, cfg: TrainConfig, generator: torch.Generator | None
):
    """Loss over all alignment steps: step 1 reads target features, step j the drafter's own step j-1
    predictions, as at draft depth j during decoding."""
    tokens, feats, mask = batch
    n, device = tokens.shape[1] - 1, tokens.device
    inp_tok, inp_feat, tgt_feat = tokens[:, 1:], feats[:, :-1].float(), feats[:, 1:].float()
    loss_mask = torch.zeros_like(mask[:, 1:], dtype=torch.float)
    loss_mask[:, :-1] = mask[:, 2:].float()  # the predicted token x_{t+2} is assistant-written
    if cfg.noise > 0 and generator is not None:
        inp_feat = inp_feat + feature_noise(inp_feat.shape, cfg.noise, generator, device)
    positions = torch.arange(n, device=device)
    steps = cfg.steps_of_alignment
    step_inputs = [inp_feat]
    with torch.no_grad():
        for j in range(2, steps + 1):
            prev = drafter(
                inp_tok.repeat(1, j - 1),
                torch.cat(step_inputs, 1),
                positions.repeat(j - 1),
                mask=_mask_on(n, j - 1, device),
            )
            shifted = torch.zeros_like(inp_feat)
            shifted[:, 1:] = prev[:, -n:-1]  # step j-1's prediction of f_t feeds position t
            step_inputs.append(shifted)
    pred = drafter(
        inp_tok.repeat(1, steps),
        torch.cat(step_inputs, 1),
        positions.repeat(steps),
        mask=_mask_on(n, steps, device),
    )
    valid = torch.cat([loss_mask * (positions >= j).float() for j in range(steps)], 1)
    target_feat = tgt_feat.repeat(1, steps, 1)
    draft_logits = pred.float() @ head.T
    target_logits = target_feat @ head.T
    loss, parts = drafter_loss(pred, target_feat, draft_logits, target_logits, valid, cfg.weights)
    parts["top1"] = top1_accuracy(draft_logits[:, :n], target_logits[:, :n], loss_mask)
    return loss, parts


def feature_noise(shape, width: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """EAGLE's uniform feature noise in [-width/2, width/2), drawn on `device` from a seed that the
    host generator gives (so runs stay reproducible and resumable): a batch's worth is tens of MB
    (65536 tokens x 576 floats = 151 MB), too much to draw on the host and copy every GPU step."""
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    local = torch.Generator(device).manual_seed(seed)
    return (torch.rand(shape, generator=local, device=device) - 0.5) * width


@functools.lru_cache(maxsize=16)
def _mask_on(n: int, steps: int, device: torch.device) -> torch.Tensor | str:
    """`alignment_mask`, kept for the lengths that recur (on a CPU, offline, building it costs more)."""
    return alignment_mask(n, steps, device)


def resolve_mixed_precision(setting: str, device: torch.device | None = None) -> str:
    from taps.device import fast_dtype

    if setting == "auto":
        return "bf16" if fast_dtype(device) == torch.bfloat16 else "no"
    return setting


def feature_sequences(target, feature_dirs: list[str]) -> list[Sequence]:
    """The cached sequences (with the target's features) of `taps features` folders made for `target`."""
    seqs: list[Sequence] = []
    for d in feature_dirs:
        manifest, part = load_sequences(d)
        if manifest["target"] != target.model.fingerprint():
            raise TapsError(
                f"features in {d} were made with another target; rerun `taps features` for this target"
            )
        seqs += part
    if not seqs:
        raise TapsError(
            "no training sequences in the feature folders; run `taps features` with a larger --tokens"
        )
    return seqs


@torch.no_grad()
def online_features(model, tokens: torch.Tensor) -> torch.Tensor:
    """The frozen target's last hidden states for a right-padded batch [B, n] (causal, so padding at
    the end changes nothing before it): what `taps features` would have cached, made on the fly.

    Its packed CPU matmuls run whole (`whole_matmuls`), as a prompt's prefill does: features need no
    plain decoding step's bits, and an exact packed target otherwise multiplies a batch in chunks of
    its row ceiling (32 rows on an AMX Xeon in bf16, where in chunks `taps train --online --profile`
    spent 1.7x as long making features, and trained at 654-719 tokens/s against 989-1048 whole)."""
    n = tokens.shape[1]
    with whole_matmuls():
        return model.run_layers(tokens, torch.arange(n, device=tokens.device), CAUSAL, None, n)


def initial_drafter(target, seqs: list[Sequence], cfg: TrainConfig) -> Drafter:
    """A fresh drafter over the corpus's most frequent tokens, or with `cfg.init` a trained one to go on
    from (its weights and its draft vocabulary, in float32 for training).

    Why warm starts: a lent GPU gives minutes at a time, and trained from scratch in ~2 minutes of an
    H200 every drafter ended behind the CPU-trained one it would replace (87-235 steps against
    thousands); continued from it, those minutes add tokens instead of starting over. Only the bf16
    weights (8.5 MB for the default target's drafters) come back from a lent machine, in one tar per
    drafter (`benchmarks/gpu_train.sh`), not the training state with its optimizer moments (~50 MB)."""
    if cfg.init is None:
        d2t = draft_vocabulary(
            seqs, target.model.shape.vocab_size, cfg.draft_vocab_size, tuple(target.eos_token_ids)
        )
        drafter = Drafter(
            DrafterConfig(target.model.shape, draft_vocab_size=len(d2t) if cfg.draft_vocab_size else None)
        )
        drafter.d2t = d2t
        return drafter
    check_init(target, cfg)
    return load_drafter(cfg.init, target.model, dtype=torch.float32).requires_grad_(True).train()


def check_init(target, cfg: TrainConfig) -> None:
    """Fail before any data work if `cfg.init` cannot be gone on from: another target's drafter, or
    another draft vocabulary size than the one asked for."""
    config = read_config(cfg.init)
    check_fingerprint(config["target"], target.model.fingerprint(), Path(cfg.init))
    size = config["drafter"].get("draft_vocab_size")
    if size != cfg.draft_vocab_size:
        raise TapsError(
            f"--init {Path(cfg.init).name} drafts over {size or 'the full vocabulary of'} tokens, not "
            f"{cfg.draft_vocab_size or 'the full vocabulary'}: pass --draft-vocab {size or 0} (a warm "
            "start keeps its draft vocabulary)"
        )


def train(
    target,
    seqs: list[Sequence],
    out_dir: str | Path,
    cfg: TrainConfig,
    resume: bool = False,
    card: dict | None = None,
) -> Path:
    """Train a drafter on `seqs`; writes `out_dir` (drafter) and `out_dir/.state`.

    Sequences carry the target's features (offline, from `feature_sequences`) or none (online, from
    `token_sequences`): then the frozen target runs inside the loop and makes each batch's features
    on the fly, as SpecForge's online mode does; no shards. Under `accelerate launch` with N
    processes each process trains on every N-th batch (data parallel)."""
    from accelerate import Accelerator

    out_dir = Path(out_dir)
    if not seqs:
        raise TapsError("no training sequences; raise --tokens or check the corpus")
    torch.manual_seed(cfg.seed)
    precision = resolve_mixed_precision(cfg.mixed_precision, target.model.device)
    accelerator = Accelerator(mixed_precision=precision, cpu=target.model.device.type == "cpu")
    device = accelerator.device  # under `accelerate launch`, this process's GPU: the target follows it
    target.model.to(device)
    drafter = initial_drafter(target, seqs, cfg)
    d2t = drafter.d2t
    drafter.to(device).attach(target.model)
    optimizer = torch.optim.AdamW(
        drafter.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay
    )
    batches = EpochBatches(seqs, cfg, accelerator.num_processes, accelerator.process_index)
    planned = max(1, math.ceil(batches.per_epoch * cfg.epochs))
    run = Progress(planned, effective_warmup(cfg.warmup_steps, planned))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, run.warmup, run.total_steps)
    )
    drafter, optimizer = accelerator.prepare(drafter, optimizer)
    training = Training(
        accelerator,
        target.model,
        drafter,
        target.model.lm_head.weight.detach()[d2t.to(device)].float(),
        optimizer,
        schedule,
        torch.Generator().manual_seed(cfg.seed),
        cfg,
        online=seqs[0].features is None,
        state_dir=out_dir.parent / f".{out_dir.name}.train",
        d2t=d2t,
    )
    if resume and training.saved():
        training.restore(run)
        print(f"[train] resumed at step {run.step}/{run.total_steps}", flush=True)
    start, first = time.perf_counter(), run.step
    seen = _run_steps(training, batches, run)
    wall = time.perf_counter() - start
    print(  # the rate a budget is planned from (benchmarks/gpu_train.sh reads it)
        f"[train] {run.step - first} steps in {wall:.1f} s: {seen / max(wall, 1e-9):.0f} tokens/s",
        flush=True,
    )
    if run.step < run.total_steps:
        print(f"[train] stopped at step {run.step}/{run.total_steps}; continue with --resume", flush=True)
        return training.state_dir
    recent = run.log[-min(50, len(run.log)) :]
    summary = {k: sum(r[k] for r in recent) / len(recent) for k in recent[0] if k not in ("step", "lr")}
    card = dict(card or {}) | {
        "config": asdict(cfg),
        "steps": run.total_steps,
        "epochs_trained": round(run.total_steps / batches.per_epoch, 3),
        "warmup_steps": run.warmup,
        "mixed_precision": precision,
        "features": "online (the target ran in the loop)" if training.online else "offline (cached shards)",
        "device": str(device),
        "processes": accelerator.num_processes,
        "train_tokens": sum(len(s.tokens) for s in seqs),
        "final_losses_last50": summary,
        "wall_s_last_run": round(wall, 1),
        # every run of this training, resumes included (unknown for states saved before it was kept)
        "wall_s": run.wall_s(wall, digits=1),
    }
    if accelerator.is_main_process:  # one writer under `accelerate launch`
        drafter = accelerator.unwrap_model(drafter).eval()
        save_drafter(drafter.to(torch.bfloat16), out_dir, target.model.fingerprint(), card)
        write_json_atomic(training.state_dir / "log.json", run.log, indent=None)
    accelerator.wait_for_everyone()
    return out_dir


def _run_steps(training: Training, batches: EpochBatches, run: Progress) -> int:
    """Steps from `run.step` to the end of the schedule (or `--max-steps`), fitting the schedule to
    `--time-limit` on a fresh run and checkpointing as it goes; returns the tokens it trained on."""
    cfg = training.cfg
    start, seen = time.perf_counter(), 0
    stop_at = min(run.total_steps, cfg.max_steps or run.total_steps)
    timer = TimeLimit(cfg.time_limit_s, start) if cfg.time_limit_s and run.step == 0 else None
    bar = tqdm(
        total=run.total_steps,
        initial=run.step,
        desc=f"train[{cfg.method}]",
        unit="step",
        dynamic_ncols=True,
        mininterval=20,
    )
    training.drafter.train()
    while run.step < stop_at:
        picked = batches.at(run.step)
        seen += sum(len(s.tokens) for s in picked)
        loss, parts = training.step(picked)
        run.step += 1
        run.log.append({"step": run.step, "loss": loss, **parts, "lr": training.schedule.get_last_lr()[0]})
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", top1=f"{parts['top1']:.3f}")
        fitted = timer.fitted(run.step, run.total_steps) if timer else None
        if fitted is not None and fitted < run.total_steps:
            run.refit(fitted, cfg.warmup_steps)
            stop_at, bar.total = min(stop_at, run.total_steps), run.total_steps
            print(
                f"\n[train] --time-limit: {fitted} steps fit ({fitted / batches.per_epoch:.2f} epochs)",
                flush=True,
            )
        if run.step % cfg.checkpoint_every == 0 or run.step == stop_at:
            training.save(run, time.perf_counter() - start)
    bar.close()
    return seen


@dataclass
class Progress:
    """Where a run stands: what a checkpoint saves and `--resume` restores. The learning-rate schedule
    reads `total_steps` and `warmup` from here, so a `--time-limit` fit (or resuming a fitted run)
    reshapes it."""

    total_steps: int
    warmup: int
    step: int = 0
    log: list = field(default_factory=list)
    earlier_s: float | None = 0.0  # training seconds of earlier runs; None for states saved before
    fitted_total: int | None = None  # the total steps a --time-limit fit cut the schedule to

    def refit(self, total_steps: int, configured_warmup: int) -> None:
        self.total_steps = self.fitted_total = total_steps
        self.warmup = effective_warmup(configured_warmup, total_steps)

    def wall_s(self, this_run_s: float, digits: int | None = None) -> float | None:
        """Training seconds over every run so far (None stays None: a state saved before time was
        kept cannot give a total)."""
        if self.earlier_s is None:
            return None
        total = self.earlier_s + this_run_s
        return total if digits is None else round(total, digits)


class EpochBatches:
    """Each epoch's shuffled batches, made once per epoch; under data parallel this process's share
    (every `world`-th batch from `rank`)."""

    def __init__(self, seqs: list[Sequence], cfg: TrainConfig, world: int, rank: int):
        self.seqs, self.cfg, self.world, self.rank = seqs, cfg, world, rank
        self.batches, self.epoch = make_batches(seqs, cfg.batch_tokens, cfg.seed, 0), 0
        self.per_epoch = max(1, len(self.batches) // world)

    def at(self, step: int) -> list[Sequence]:
        epoch, idx = divmod(step, self.per_epoch)
        if epoch != self.epoch:
            self.batches, self.epoch = (
                make_batches(self.seqs, self.cfg.batch_tokens, self.cfg.seed, epoch),
                epoch,
            )
        return [self.seqs[i] for i in self.batches[(idx * self.world + self.rank) % len(self.batches)]]


@dataclass
class Training:
    """What a training step touches, built once by `train`: one step, and the checkpoint that saves
    and restores it (atomically, in `state_dir`)."""

    accelerator: object
    model: object  # the frozen target (online features)
    drafter: Drafter
    head: torch.Tensor  # the target's LM head rows of the draft vocabulary, float32
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator  # feature noise, saved with the checkpoint so resumes stay reproducible
    cfg: TrainConfig
    online: bool
    state_dir: Path
    d2t: torch.Tensor  # the draft vocabulary, on the host: a state made with other features is refused

    def step(self, picked: list[Sequence]) -> tuple[float, dict]:
        """One optimiser step on a batch; its loss and the loss's parts."""
        device = self.accelerator.device
        with phase("batch"):
            tokens, feats, mask = collate(picked)
            tokens, mask = tokens.to(device), mask.to(device)
            feats = feats if self.online else feats.to(device)
        if self.online:
            with phase("target features"):
                feats = online_features(self.model, tokens)
        with phase("loss"), self.accelerator.autocast():  # the loss's head matmuls too, not only the drafter
            loss, parts = training_loss(
                self.drafter, self.head, (tokens, feats, mask), self.cfg, self.generator
            )
        with phase("backward"):
            self.optimizer.zero_grad()
            self.accelerator.backward(loss)
        with phase("optimizer"):
            self.accelerator.clip_grad_norm_(self.drafter.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            self.schedule.step()
        return loss.item(), parts

    def saved(self) -> bool:
        return (self.state_dir / "state.pt").is_file()

    def save(self, run: Progress, this_run_s: float) -> None:
        if not self.accelerator.is_main_process:  # one writer under `accelerate launch`
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / ".state.pt.tmp"
        torch.save(
            {
                "drafter": self.drafter.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "generator": self.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "step": run.step,
                "log": run.log,
                "d2t": self.d2t,
                "wall_s": run.wall_s(this_run_s),
                "fitted_total": run.fitted_total,  # None unless --time-limit cut the schedule
            },
            tmp,
        )
        os.replace(tmp, self.state_dir / "state.pt")

    def restore(self, run: Progress) -> None:
        """Load the saved model, optimiser and random state, and `run`'s place; a run fitted to a time
        limit resumes to its fitted length."""
        path = self.state_dir / "state.pt"
        try:
            state = torch.load(path, weights_only=False, map_location="cpu")
        except Exception as exc:
            raise TapsError(f"training state {path} is unreadable ({exc}); delete it to start over") from exc
        if not torch.equal(state["d2t"], self.d2t):
            raise TapsError(
                f"training state in {self.state_dir} was made with other features; delete it to start over"
            )
        self.drafter.load_state_dict(state["drafter"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        run.step, run.log, run.earlier_s = state["step"], state["log"], state.get("wall_s")
        if state.get("fitted_total"):
            run.refit(state["fitted_total"], self.cfg.warmup_steps)


# a --time-limit run is fitted after FIT_AFTER steps at the rate of those after FIT_SKIP: on the first
# H200 run the first steps (CUDA start-up, kernel selection) made the rate look half what it was
FIT_SKIP, FIT_AFTER = 2, 8


class TimeLimit:
    """`--time-limit` for a fresh run: times steps FIT_SKIP..FIT_AFTER, then says how many fit."""

    def __init__(self, limit_s: float, start: float):
        self.limit_s, self.start, self.warm_at = limit_s, start, start

    def fitted(self, step: int, planned: int) -> int | None:
        """The run's total steps once they are known (after step FIT_AFTER), else None."""
        if step == FIT_SKIP:
            self.warm_at = time.perf_counter()
        if step != FIT_AFTER:
            return None
        now = time.perf_counter()
        per_step = (now - self.warm_at) / (FIT_AFTER - FIT_SKIP)
        return steps_that_fit(self.limit_s, now - self.start, per_step, step, planned)


def steps_that_fit(limit_s: float, elapsed_s: float, per_step_s: float, done: int, planned: int) -> int:
    """Total steps a run can take within `limit_s` seconds of training, `done` steps having taken
    `elapsed_s` and each further one `per_step_s` (at least one more than done, at most as planned)."""
    per_step = max(per_step_s, 1e-9)
    return max(done + 1, min(planned, done + int((limit_s - elapsed_s) / per_step)))


def effective_warmup(configured: int, total_steps: int) -> int:
    """Warm-up capped at a quarter of the run: a small-budget run (a few dozen steps) would otherwise
    end before the learning rate ever reached its peak."""
    return min(configured, total_steps // 4)


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
