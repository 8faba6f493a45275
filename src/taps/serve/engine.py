"""One model, many clients: a FIFO job queue run by a single worker thread.

The target and its proposers hold per-sequence state (KV caches), so exactly one generation runs
at a time and requests wait their turn in arrival order. The worker checks a cancel flag between
target forwards, so a client that goes away frees the model within one step. Text is streamed as
deltas that never have to be taken back: a tail that could still become a stop string, or an
incomplete UTF-8 character, is held until it is decided.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

from taps.errors import TapsError
from taps.spec.generate import GenerationConfig, SpeculativeGenerator, TextStream, check_context, stop_cut
from taps.spec.logprobs import TokenLogprob, prompt_logprobs
from taps.spec.prefix import PrefixCache
from taps.spec.propose import TreeShape

log = logging.getLogger("taps.serve")  # one line a finished request (`taps serve` shows them)


@dataclass(frozen=True)
class Route:
    """Which proposers serve a request: a strategy over drafter names (`none` = plain decoding)."""

    strategy: str
    drafters: tuple[str, ...]


@dataclass
class Delta:
    """A piece of reply `index`; the last one of each reply carries `finish_reason`, and the usage
    stats of the request so far."""

    text: str
    finish_reason: str | None = None
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens found in the kept cache (OpenAI's prompt_tokens_details)
    stats: dict = field(default_factory=dict)
    # the tokens committed with this piece, when asked for; their text may still be held back
    logprobs: list[TokenLogprob] = field(default_factory=list)
    index: int = 0  # which of the request's `n` replies


class ServerBusy(Exception):
    """More requests are waiting than the queue admits."""


class JobCancelled(Exception):
    """The job was dropped because its client went away."""


@dataclass
class Job:
    prompt_ids: list[int]
    config: GenerationConfig
    route: Route
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue
    cancelled: threading.Event = field(default_factory=threading.Event)
    replies: int = 1  # OpenAI's `n`: samples drawn one after another, seeds seed, seed + 1, ...
    echo: str | None = None  # the prompt's text, to send (with its tokens' scores) before each reply


class Engine:
    """The served target, a cache of proposers per route, and the worker that runs jobs in order."""

    def __init__(
        self,
        target,
        default: Route,
        shape: TreeShape = TreeShape(),
        max_queue: int = 64,
        max_proposers: int = 8,
        extra_drafters: tuple[str, ...] = (),
        lookup: str = "auto",
        keep_prefix: int = 4,
    ):
        from taps.drafters import shipped_drafters

        self.target, self.default, self.shape, self.lookup = target, default, shape, lookup
        # Requests may name these only: never an arbitrary path on the server's disk.
        self.allowed = {"ngram", "none", *shipped_drafters(target.name), *default.drafters, *extra_drafters}
        self.max_queue, self.max_proposers = max_queue, max_proposers
        self.context_limit = target.model.shape.max_position_embeddings
        self.stats = {"completed": 0, "cancelled": 0, "failed": 0}
        self._proposers: OrderedDict[Route, object] = OrderedDict()
        # a conversation's next turn reads only its new tokens (`keep_prefix` conversations kept)
        self.prefix = PrefixCache(keep_prefix) if keep_prefix else None
        self._lock = threading.Lock()
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="taps-engine", daemon=True)
        self._worker.start()
        self.proposer(default)  # load (and check) the server's own drafters at start-up

    def proposer(self, route: Route):
        """The proposer for a route, loaded once; names the server does not offer raise TapsError."""
        from taps.drafters import make_strategy

        refused = [d for d in route.drafters if d not in self.allowed]
        if refused:
            raise TapsError(
                f"unknown drafter {refused[0]!r} on this server: use one of "
                f"{', '.join(sorted(self.allowed))} "
                "(or start the server with it in --drafters / --extra-drafters)"
            )
        with self._lock:
            if route in self._proposers:
                self._proposers.move_to_end(route)
                return self._proposers[route]
        made = make_strategy(route.strategy, list(route.drafters), self.target, self.shape, self.lookup)
        with self._lock:
            self._proposers[route] = made
            while len(self._proposers) > self.max_proposers:
                self._proposers.popitem(last=False)
        return made

    def submit(
        self,
        prompt_ids: list[int],
        config: GenerationConfig,
        route: Route,
        replies: int = 1,
        echo: str | None = None,
    ) -> Job:
        """Check a request against the model and the queue, then queue it (called on the event loop)."""
        check_context(len(prompt_ids), config.max_new_tokens, self.context_limit, "max_tokens")
        if self._jobs.qsize() >= self.max_queue:
            raise ServerBusy(f"{self._jobs.qsize()} requests are already waiting; retry later")
        self.proposer(route)
        loop, out = asyncio.get_running_loop(), asyncio.Queue()
        job = Job(prompt_ids, config, route, loop, out, replies=replies, echo=echo)
        self._jobs.put(job)
        return job

    async def events(self, job: Job):
        """Yield a job's Deltas until its last reply finishes; leaving early (the client went away)
        cancels it."""
        try:
            finished = 0
            while finished < job.replies:
                item = await job.out.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                finished += item.finish_reason is not None
        finally:
            job.cancelled.set()

    def waiting(self) -> int:
        """Requests queued behind the one running."""
        return self._jobs.qsize()

    def working(self) -> bool:
        """Whether the worker thread still takes jobs (not after `close`)."""
        return self._worker.is_alive()

    def close(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                outcome = self._generate(job)
                if outcome == "cancelled":
                    _send(job, JobCancelled())
            except Exception as exc:  # reported to the waiting request, never kills the worker
                outcome = "failed"
                _send(job, exc)
            self.stats[outcome] += 1

    def _generate(self, job: Job) -> str:
        if job.cancelled.is_set():
            return "cancelled"
        from taps.drafters import looks_up

        start = time.perf_counter()
        proposer = self.proposer(job.route)
        generator = SpeculativeGenerator(self.target.model, proposer, prefix=self.prefix)
        tally = _Tally(job.route, looks_up(proposer))
        echoed = self._echo(job)
        for index in range(job.replies):
            if echoed is not None:
                _send(job, replace(echoed, index=index))
            config = replace(job.config, seed=(job.config.seed + index) % (1 << 63))
            finish = self._reply(job, generator, config, tally, index)
            if finish is None:
                return "cancelled"
        seconds = time.perf_counter() - start
        log.info(
            "%s %s: prompt %d tokens (%d kept), %d new in %.2f s (%.1f tok/s), tau %.2f, finish %s",
            job.route.strategy,
            ",".join(job.route.drafters),
            len(job.prompt_ids),
            tally.cached,
            tally.tokens,
            seconds,
            tally.tokens / seconds if seconds > 0 else 0.0,
            tally.stats()["tau"],
            finish,
        )
        return "completed"

    def _echo(self, job: Job) -> Delta | None:
        """The prompt as a piece of each reply, scored when scores are asked for (`echo`)."""
        if job.echo is None:
            return None
        top = job.config.logprobs
        scores = [] if top is None else prompt_logprobs(self.target.model, job.prompt_ids, top)
        return Delta(job.echo, logprobs=scores)

    def _reply(self, job: Job, generator, config: GenerationConfig, tally, index: int) -> str | None:
        """Decode one of the job's replies, sending its Deltas; its finish reason (None: cancelled)."""
        text = TextStream(self.target.tokenizer, config.stop)
        finish, stopped = "length", False
        for new, record, logprobs in generator.stream(job.prompt_ids, config):
            if job.cancelled.is_set():
                return None
            if record is None and index == 0:  # the prompt was read: how much of it was kept
                tally.cached = self.prefix.reused if generator.prefix is not None else 0
            tally.add(new, record)
            delta, stopped = text.push(new)
            if stopped:  # the reply, its count and its scores end with the token that completed the stop
                past = len(text.tokens) - stop_cut(self.target.tokenizer, text.tokens, config.stop)
                tally.tokens -= past
                logprobs = logprobs[: len(logprobs) - past]
            if delta or logprobs:
                _send(job, Delta(delta, logprobs=logprobs, index=index))
            if stopped or new[-1] in config.eos_token_ids:
                finish = "stop"
                break
        tail = "" if stopped else text.flush()
        _send(job, Delta(tail, finish, tally.tokens, tally.cached, tally.stats(), index=index))
        return finish


class _Tally:
    """Per-request counts for `usage` and the `taps` extension field."""

    def __init__(self, route: Route, lookup: bool = False):
        self.route, self.tokens, self.steps, self.accepted = route, 0, 0, 0
        self.cached = 0  # prompt tokens found in the kept cache (the first reply's read)
        self.prefills = 0  # one a reply
        self.lookup = lookup  # prompt lookup joined the drafters (`--lookup`): source bit len(drafters)
        self.sources = (*route.drafters, "ngram") if lookup else route.drafters
        self.by_drafter = [0] * len(self.sources)

    def add(self, new: list[int], record) -> None:
        self.tokens += len(new)
        if record is None:  # the prefill's token
            self.prefills += 1
            return
        self.steps, self.accepted = self.steps + 1, self.accepted + record.accepted
        for bits in record.accepted_sources:  # bit i set = drafter i proposed the accepted node
            for i in range(len(self.by_drafter)):
                self.by_drafter[i] += (bits >> i) & 1

    def stats(self) -> dict:
        names = self.route.drafters
        return {
            "tau": (self.steps + self.accepted) / self.steps if self.steps else 1.0,
            "target_forwards": self.steps + self.prefills,
            "strategy": self.route.strategy,
            "drafters": list(names),
            "lookup": self.lookup,
            "accepted_by_drafter": dict(zip(self.sources, self.by_drafter)) if names != ("none",) else {},
        }


def _send(job: Job, item) -> None:
    """Hand an item to the request's event loop (which may be gone if the server is shutting down)."""
    try:
        job.loop.call_soon_threadsafe(job.out.put_nowait, item)
    except RuntimeError:
        job.cancelled.set()
