"""The generation loop: prefill, then propose -> verify -> accept until done.

One target forward per step verifies the whole draft tree; the KV cache is then compacted to the
accepted path and the proposer receives the target features of the newly committed positions.
With no proposer every tree is empty and this is plain decoding on the same forward and cache:
the 1.0x line of every speed figure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from taps.errors import TapsError
from taps.models.graphs import accelerated
from taps.models.padded import cap_tree
from taps.models.target import TargetModel
from taps.spec.logprobs import MAX_TOP_LOGPROBS, TokenLogprob, token_logprobs
from taps.spec.prefix import PrefixCache
from taps.spec.propose import Proposer
from taps.spec.tree import DraftTree
from taps.spec.verify import Draws, sample_token, verify_greedy, verify_sampling


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    eos_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; k: each token's log-probability and the top k beside it

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise TapsError(f"max_new_tokens must be > 0, got {self.max_new_tokens}")
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise TapsError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise TapsError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):  # "" would match before the first token
            raise TapsError("stop strings must not be empty")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise TapsError(f"logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.logprobs}")


def check_context(
    prompt_tokens: int, max_new_tokens: int, context: int, field: str = "max_new_tokens"
) -> None:
    """Refuse a generation that could run past the target's context: positions beyond the ones its
    rotary embedding was trained on decode to garbage, without any error of their own."""
    if prompt_tokens + max_new_tokens > context:
        raise TapsError(
            f"prompt ({prompt_tokens} tokens) + {field} ({max_new_tokens}) exceeds the model's context of "
            f"{context} tokens; shorten the prompt or lower {field}"
        )


@dataclass
class StepRecord:
    """One target forward: what was drafted, what was accepted, and where the time went."""

    accepted: int  # drafted tokens accepted (the bonus token comes on top)
    tree_size: int
    draft_ms: float
    verify_ms: float
    node_confidence: list[float] = field(default_factory=list)
    node_entropy: list[float] = field(default_factory=list)
    node_accepted: list[bool] = field(default_factory=list)
    node_source: list[int] = field(default_factory=list)
    accepted_sources: list[int] = field(default_factory=list)


@dataclass
class Generation:
    tokens: list[int]
    steps: list[StepRecord]
    prefill_ms: float
    wall_ms: float
    finish_reason: str  # "length" | "eos" | "stop"
    text: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per token when asked for

    @property
    def tau(self) -> float:
        """Acceptance length: tokens emitted per verifying target forward (accepted + bonus)."""
        return sum(s.accepted + 1 for s in self.steps) / len(self.steps) if self.steps else 1.0

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / (self.wall_ms / 1000) if self.wall_ms > 0 else 0.0


class Committed(NamedTuple):
    """What one target forward adds to the reply (the prefill's first token comes with no record)."""

    tokens: list[int]
    record: StepRecord | None
    logprobs: list[TokenLogprob]  # one per token if `GenerationConfig.logprobs` asks, else empty


class SpeculativeGenerator:
    def __init__(
        self,
        target: TargetModel,
        proposer: Proposer | None = None,
        graphs: bool | None = None,
        pad_rows: int | None = None,
        prefix: PrefixCache | None = None,
    ):
        """`graphs`: run the target through CUDA graphs (`taps.models.graphs`); default: on CUDA.
        Where forwards are padded to one row count (`pad_rows`, by default in bf16 only, see
        `taps.models.padded`), trees are cut to fit it, so that verification rounds as plain decoding.
        `prefix`: keep the cache of each sequence for the next prompt that starts alike (a
        conversation's next turn); only where the target runs eagerly over a growing cache."""
        self.target, self.proposer = accelerated(target, graphs, pad_rows), proposer
        self.prefix = prefix if self.target is target else None
        self.context = target.shape.max_position_embeddings
        self.max_nodes = cap_tree(1 << 30, getattr(self.target, "exact_rows", 0))

    def generate(
        self,
        prompt_ids: list[int],
        config: GenerationConfig,
        tokenizer=None,
        on_text: Callable[[str], None] | None = None,
    ) -> Generation:
        """Run to completion; with a tokenizer, honour `config.stop` strings and decode the text, and
        hand `on_text` each piece of it as soon as no later token can change it (`TextStream`)."""
        pieces = TextStream(tokenizer, config.stop) if on_text is not None and tokenizer is not None else None
        start = time.perf_counter()
        tokens: list[int] = []
        steps: list[StepRecord] = []
        logprobs: list[TokenLogprob] = []
        prefill_ms, reason = 0.0, "length"
        for new, record, scores in self.stream(prompt_ids, config):
            if record is None:
                prefill_ms = (time.perf_counter() - start) * 1000
            else:
                steps.append(record)
            tokens.extend(new)
            logprobs.extend(scores)
            if pieces is not None and (piece := pieces.push(new)[0]):
                on_text(piece)
            if tokens and tokens[-1] in config.eos_token_ids:
                reason = "eos"
            if tokenizer is not None and config.stop:
                cut = stop_cut(tokenizer, tokens, config.stop)
                if cut is not None:
                    tokens, logprobs, reason = tokens[:cut], logprobs[:cut], "stop"
                    break
        if pieces is not None and reason != "stop" and (piece := pieces.flush()):
            on_text(piece)
        wall_ms = (time.perf_counter() - start) * 1000
        text = None
        if tokenizer is not None:
            text = cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), config.stop)
        return Generation(tokens, steps, prefill_ms, wall_ms, reason, text, logprobs)

    @torch.inference_mode()
    def stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[Committed]:
        """Yield the tokens each target forward commits, never past `max_new_tokens` and stopping
        right after an EOS token."""
        if not prompt_ids:
            raise TapsError("the prompt is empty; give at least one token of input")
        check_context(len(prompt_ids), config.max_new_tokens, self.context)
        target, budget = self.target, config.max_new_tokens
        device = target.device
        # on the CPU whatever the device: sampling reads host-side probabilities. Each token's own
        # draw (`Draws`); the generator serves trees with drawn nodes (`TreeShape.drafts`)
        draws, generator = Draws(config.seed), torch.Generator().manual_seed(config.seed)
        cache, reused = self._cache(prompt_ids, len(prompt_ids) + budget + 64)
        if self.proposer is not None:
            self.proposer.reset()
            # a generator of its own for sampled drafts (`TreeShape.drafts`), apart from verification's
            draft_seed = (config.seed + 1) % (1 << 64)
            self.proposer.sample_drafts(config.temperature, torch.Generator().manual_seed(draft_seed))
        tokens = list(prompt_ids)
        hidden = target(torch.tensor(tokens[cache.length :], device=device), cache)
        self._committed(tokens[len(tokens) - len(hidden) :], hidden)
        logits = target.logits(hidden[-1:])
        root = sample_token(logits[0], config.temperature, draws, 0, config.top_p)
        tokens.append(root)
        yield Committed([root], None, _scores(logits, [root], config))
        produced, features = 1, hidden if reused is None else torch.cat([reused, hidden])
        while produced < budget and root not in config.eos_token_ids:
            t0 = time.perf_counter()
            tree = (
                self.proposer.propose(torch.tensor(tokens, device=device), features).best(self.max_nodes)
                if self.proposer
                else DraftTree.empty()
            )
            t1 = time.perf_counter()
            base = cache.length
            new, features, record, scores = self._verify(
                tree, root, cache, config, (draws, produced, generator)
            )
            self._committed([root, *new[:-1]], features)
            record.draft_ms, record.verify_ms = (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000
            if self.proposer is not None:
                self.proposer.observe(record)
            new = _until_eos(new[: budget - produced], config.eos_token_ids)
            produced += len(new)
            tokens.extend(new)
            root = new[-1]
            assert cache.length == base + record.accepted + 1
            yield Committed(new, record, scores[: len(new)])

    def _cache(self, prompt_ids: list[int], capacity: int):
        """The cache to read the prompt into, and the features of the prefix it already holds."""
        if self.prefix is None:
            return self.target.new_cache(capacity), None
        return self.prefix.take(self.target, prompt_ids, capacity)

    def _committed(self, ids: list[int], features: torch.Tensor) -> None:
        """Tell the kept prefix which tokens the cache now holds after its last slots."""
        if self.prefix is not None:
            self.prefix.extend(ids, features)

    def _verify(self, tree: DraftTree, root: int, cache, config: GenerationConfig, sampling):
        """`sampling`: the reply's draws, the place of the root's next token, the generator."""
        base, device = cache.length, self.target.device
        if len(tree):
            tok, pos, mask = tree.verification_inputs(root, base, device)
            hidden = self.target(tok, cache, pos, mask)
        else:
            hidden = self.target(torch.tensor([root], device=device), cache)
        logits = self.target.logits(hidden)
        tree = tree.to("cpu")  # acceptance is decided on the host: one transfer of the small tree
        if config.temperature <= 0:
            verdict = verify_greedy(tree, logits)
        else:
            draws, place, generator = sampling
            verdict = verify_sampling(tree, logits, config.temperature, generator, config.top_p, draws, place)
        rows = [0] + [a + 1 for a in verdict.accepted]
        cache.compact(base, [base + r for r in rows])
        new = tree.tokens[verdict.accepted].tolist() + [verdict.bonus]
        on_path = torch.tensor(rows, device=device)
        scores = _scores(logits, new, config, on_path)
        return new, hidden[on_path], _record(tree, verdict.accepted), scores


def _scores(
    logits: torch.Tensor, tokens: list[int], config: GenerationConfig, rows: torch.Tensor | None = None
) -> list[TokenLogprob]:
    """The log-probabilities asked for (`logits[rows][i]`: the distribution `tokens[i]` came from);
    nothing is computed, nor the rows gathered, unless asked."""
    if config.logprobs is None:
        return []
    return token_logprobs(logits if rows is None else logits[rows], tokens, config.logprobs)


def _record(tree: DraftTree, accepted: list[int]) -> StepRecord:
    on_path = torch.zeros(len(tree), dtype=torch.bool)
    on_path[accepted] = True
    return StepRecord(
        accepted=len(accepted),
        tree_size=len(tree),
        draft_ms=0.0,
        verify_ms=0.0,
        node_confidence=tree.scores.exp().tolist(),
        node_entropy=tree.entropies.tolist(),
        node_accepted=on_path.tolist(),
        node_source=tree.sources.tolist(),
        accepted_sources=tree.sources[accepted].tolist(),
    )


def _until_eos(tokens: list[int], eos: tuple[int, ...]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


def stop_cut(tokenizer, tokens: list[int], stops: tuple[str, ...]) -> int | None:
    """Length of the shortest token prefix whose text contains a stop string, if any."""
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    if not any(s in text for s in stops):
        return None
    lo, hi = 1, len(tokens)
    while lo < hi:  # the property "prefix text contains a stop" is monotone in the prefix length
        mid = (lo + hi) // 2
        if any(s in tokenizer.decode(tokens[:mid], skip_special_tokens=True) for s in stops):
            hi = mid
        else:
            lo = mid + 1
    return lo


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    """The text before the first stop string (all of it when none occurs)."""
    cuts = [text.find(s) for s in stops if s in text]
    return text[: min(cuts)] if cuts else text


class TextStream:
    """Turns a growing token list into text deltas, cut at the first stop string."""

    def __init__(self, tokenizer, stops: tuple[str, ...]):
        self.tokenizer, self.stops = tokenizer, stops
        self.tokens: list[int] = []
        self.emitted = 0  # characters already sent

    def push(self, new: list[int]) -> tuple[str, bool]:
        """Add tokens; return the text that is now final, and whether a stop string ended the reply."""
        self.tokens.extend(new)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        final = cut_at_stop(text, self.stops)
        if len(final) < len(text):
            return self._emit(final), True
        safe = text.rstrip("\ufffd")  # an incomplete UTF-8 character decodes as U+FFFD until it is whole
        hold = max((k for s in self.stops for k in range(1, len(s)) if safe.endswith(s[:k])), default=0)
        return self._emit(safe[: len(safe) - hold]), False

    def flush(self) -> str:
        return self._emit(self.tokenizer.decode(self.tokens, skip_special_tokens=True))

    def _emit(self, final: str) -> str:
        delta = final[self.emitted :] if len(final) > self.emitted else ""
        self.emitted = max(self.emitted, len(final))
        return delta
