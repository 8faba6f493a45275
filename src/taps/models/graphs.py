"""CUDA graphs for the target's and the drafters' forwards: a static KV cache, a few padded sizes,
captured once each.

On a GPU a decoding step is launch-bound, not arithmetic-bound: on an H200 the default target's
eager forward took 12-14 ms whatever the token count, and 2.1-2.9 ms for 1-256 tokens captured in a
CUDA graph (`../shared/design`). So on CUDA every forward of at most max(BUCKETS) tokens (plain
steps and tree verification alike) is padded to the next bucket and replayed from a graph captured
over a static cache; longer ones (the prompt) run eagerly over the same cache.

Static means fixed addresses and shapes: the cache is allocated once (grown, and the graphs
recaptured, only when a longer generation asks for more), new keys/values are written at slot
indices held in a device buffer, and attention covers the whole capacity under a mask that shows
each row the committed slots and its own tree ancestors. Padding rows write to a spare tail of the
cache that no real row ever sees, so a padded forward computes exactly what the plain one does.

Drafting is the same story at a smaller scale: one small forward per tree level. `GraphedDrafter`
runs a stack of drafters (`taps.models.stacked`) the same way, and the tree drafter
(`taps.spec.propose.TreeDrafter`) uses it on CUDA. With a fixed tree shape the whole expansion (every
level's forward and the bookkeeping between levels: scores, top-k, masks) is captured as one more
graph (`forward_at` takes the step's cache offset as a device tensor); on an H200 that bookkeeping,
run eagerly, cost about 1.1 ms per level against a 4.4 ms target forward. Under the auto budget the
same graph serves where the cost curve is nearly flat (`TreeBudget.verifies_freely`); elsewhere the
levels stay separate replays and the budget decides on the host, between levels, whether to go on.

`GraphedTarget` has the target's interface (`__call__`, `logits`, `new_cache`, `device`), so the
generation loop does not change. With `capture=False` (the default off CUDA) it runs the same static
path eagerly: that is what the CPU tests check against the plain forward, and what bf16 decoding on a
CPU runs with a single bucket (`taps.models.padded`: padded forwards round alike).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from taps.errors import TapsError
from taps.models.layers import KVCache
from taps.models.packed import reading_in
from taps.models.padded import attention_dtype, invariant_rows, padded_logits

BUCKETS = (1, 2, 4, 8, 16, 32, 64)
MIN_CAPACITY = 1024  # with graphs: growing the cache means capturing them again
EAGER_ROUND = 64  # without: the cache is sized to each generation, in steps of this many slots


class _Inputs:
    """The static input buffers of one bucket size."""

    def __init__(self, bucket: int, total: int, device: torch.device):
        self.tokens = torch.zeros(bucket, dtype=torch.long, device=device)
        self.positions = torch.zeros(bucket, dtype=torch.long, device=device)
        self.slots = torch.zeros(bucket, dtype=torch.long, device=device)
        self.mask = torch.zeros(bucket, total, dtype=torch.bool, device=device)

    def fill(self, tokens, positions, tree_mask, start: int, spare: int) -> None:
        """Rows 0..n-1: the real tokens (the last dim of `tokens`) at slots start..; the rest write to
        the spare tail and see slot 0. `tree_mask`: see `fill_mask`."""
        n, bucket, device = tokens.shape[-1], self.slots.shape[0], self.slots.device
        self.tokens[..., :n], self.positions[:n] = tokens, positions
        self.tokens[..., n:], self.positions[n:] = 0, 0
        self.slots[:n] = torch.arange(start, start + n, device=device)
        self.slots[n:] = torch.arange(spare, spare + bucket - n, device=device)
        fill_mask(self.mask, tree_mask, start, n)


def fill_mask(mask: torch.Tensor, tree_mask: torch.Tensor | None, start: int, n: int) -> None:
    """mask [..., rows, total] for n real rows at slots start..: `tree_mask` [..., n, w] (see
    `attention_mask`; causal without one) over the last w of the slots before start + n, every earlier
    slot seen by all. Padding rows see slot 0 (an all-masked row would be NaN)."""
    mask.zero_()
    if tree_mask is None:
        tree_mask = torch.ones(n, n, dtype=torch.bool, device=mask.device).tril_()
    seen = start + n - tree_mask.shape[-1]
    mask[..., :n, :seen] = True
    mask[..., :n, seen : start + n] = tree_mask
    mask[..., n:, 0] = True


class _BucketGraphs:
    """What both graphed forwards share: a static cache, input buffers per bucket and one CUDA graph per
    bucket, recorded on its first use from the request's own inputs (the warm-up runs write the same
    keys and values the replay then writes), or the same path run eagerly without graphs."""

    def __init__(self, device: torch.device, buckets: tuple[int, ...], capture: bool | None):
        self.buckets = tuple(sorted(buckets))
        self.capture = device.type == "cuda" if capture is None else capture
        self.cache: KVCache | None = None
        self.capacity = 0  # usable slots; the spare tail (max bucket) takes padding rows
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.inputs: dict = {}
        self.pool = None

    def _run(self, inputs) -> torch.Tensor:
        """The model's layers over `inputs`, writing keys and values at the inputs' slot indices."""
        self.cache.slots = inputs.slots
        try:
            return self._layers(inputs)
        finally:
            self.cache.slots = None

    def _layers(self, inputs) -> torch.Tensor:
        raise NotImplementedError

    def _bucket(self, rows: int) -> int | None:
        """The smallest bucket that holds `rows` (None: longer than every bucket)."""
        return next((b for b in self.buckets if b >= rows), None)

    def _hold_rotary(self, model, total: int) -> None:
        """Build `model`'s rotary tables for every slot now, and hold them: the graphs read these
        tensors even if a longer eager forward elsewhere replaces the model's."""
        model.rotary(torch.zeros(1, dtype=torch.long, device=model.device), model.dtype, total)
        self.tables = (model.rotary._cos, model.rotary._sin)

    def _replay(self, bucket: int) -> torch.Tensor:
        inputs = self.inputs[bucket]
        if not self.capture:
            return self._run(inputs)
        if bucket not in self.graphs:
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            self.graphs[bucket] = capture(lambda: self._run(inputs), inputs.slots.device, self.pool)
        graph, output = self.graphs[bucket]
        graph.replay()
        return output


class GraphedTarget(_BucketGraphs):
    """A TargetModel's forward on a static cache, padded to BUCKETS, replayed from CUDA graphs."""

    def __init__(
        self,
        model,
        buckets: tuple[int, ...] = BUCKETS,
        capture: bool | None = None,
        wide_attention: bool | torch.dtype | None = None,
    ):
        """`wide_attention`: keep the static cache, and attend, in a wider dtype than a bf16 model's
        (`taps.models.padded.attention_dtype`: float32 on CUDA, float64 on a CPU); by default on a CPU,
        and on CUDA where forwards are padded alike (one bucket). False: in the model's dtype; a dtype:
        in that one."""
        self.model = model
        super().__init__(model.device, buckets, capture)
        self.exact_rows = self.buckets[0] if len(self.buckets) == 1 else 0  # one bucket: padded alike
        if isinstance(wide_attention, torch.dtype):
            self.attention_dtype = wide_attention
        elif wide_attention is False:
            self.attention_dtype = model.dtype
        else:
            padded = bool(self.exact_rows) if wide_attention is None else wide_attention
            self.attention_dtype = attention_dtype(model, padded)

    def __getattr__(self, name: str):
        """Everything else (device, dtype, shape, logits, fingerprint, ...) is the model's."""
        if name == "model":  # not set yet (copying, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)

    def new_cache(self, capacity: int = 512) -> KVCache:
        """The static cache, emptied. With graphs it is reallocated (and they are recaptured) only when
        `capacity` outgrows it. Without, it is sized to the request, rounded up to EAGER_ROUND slots:
        attention spans the whole cache, so a cache left large by an earlier long generation would
        slow every later step, and a generation's attention span depends only on its own length (the
        same generation always rounds alike: `taps.models.padded`)."""
        rounded = -(-capacity // EAGER_ROUND) * EAGER_ROUND
        if self.capture and capacity > self.capacity:
            self._allocate(max(capacity, 2 * self.capacity, MIN_CAPACITY))
        elif not self.capture and rounded != self.capacity:
            self._allocate(rounded)
        self.cache.length = 0
        return self.cache

    def _allocate(self, capacity: int) -> None:
        total = capacity + self.buckets[-1]
        self.cache, self.capacity = self.model.new_cache(total, self.attention_dtype), capacity
        self._hold_rotary(self.model, total)
        self.inputs = {b: _Inputs(b, total, self.device) for b in self.buckets}
        self.graphs = {}

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, cache: KVCache, positions=None, tree_mask=None) -> torch.Tensor:
        """TargetModel.forward on the static cache: hidden states [n, H] of the n new tokens."""
        if cache is not self.cache:
            raise TapsError("a GraphedTarget runs on its own cache: get it from new_cache()")
        n, start = tokens.shape[0], cache.length
        if start + n > self.capacity:
            raise TapsError(f"the static cache holds {self.capacity} tokens, {start + n} were asked for")
        if positions is None:
            positions = torch.arange(start, start + n, device=tokens.device)
        bucket = self._bucket(n)
        if bucket is None:
            hidden = self._eager(tokens, positions, tree_mask, start)
        else:
            self.inputs[bucket].fill(tokens, positions, tree_mask, start, self.capacity)
            hidden = self._replay(bucket)[:n]
        cache.length = start + n
        return hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The LM head on the bucket's row count too, so that its rounding depends on the bucket only;
        `hidden` [n, H], or one vector [H] (one row)."""
        rows = 1 if hidden.dim() == 1 else hidden.shape[0]
        return padded_logits(self.model, hidden, self._bucket(rows) or 0)

    def _layers(self, inputs: _Inputs) -> torch.Tensor:
        return self.model.run_layers(
            inputs.tokens, inputs.positions, inputs.mask, self.cache, self.cache.capacity
        )

    def _eager(self, tokens, positions, tree_mask, start: int) -> torch.Tensor:
        """A forward longer than every bucket (a prompt): the static path without padding or graph."""
        n = tokens.shape[0]
        inputs = _Inputs(n, self.cache.capacity, self.device)
        inputs.tokens, inputs.positions = tokens, positions
        inputs.slots = torch.arange(start, start + n, device=self.device)
        fill_mask(inputs.mask, tree_mask, start, n)
        with reading_in(n, tree_mask):  # packed CPU matmuls (`--pad-rows` on a CPU) run a prompt whole
            return self._run(inputs)


def capture(
    run: Callable[[], torch.Tensor], device: torch.device, pool
) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Warm `run` up on a side stream (as torch requires), then record one call of it in a graph."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):
            run()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        output = run()
    return graph, output


class _DraftInputs(_Inputs):
    """The static input buffers of one bucket size for a stack of `members` drafters: tokens and the
    mask gain a leading member dim (the mask also a head dim), and each row carries a feature vector."""

    def __init__(self, members: int, bucket: int, total: int, hidden: int, dtype, device: torch.device):
        self.tokens = torch.zeros(members, bucket, dtype=torch.long, device=device)
        self.features = torch.zeros(members, bucket, hidden, dtype=dtype, device=device)
        self.positions = torch.zeros(bucket, dtype=torch.long, device=device)
        self.slots = torch.zeros(bucket, dtype=torch.long, device=device)
        self.mask = torch.zeros(members, 1, bucket, total, dtype=torch.bool, device=device)

    def fill(self, tokens, features, positions, tree_mask, start: int, spare: int) -> None:
        """As `_Inputs.fill`, with features [N, n, H] and `tree_mask` [N, 1, n, w]."""
        super().fill(tokens, positions, tree_mask, start, spare)
        n = tokens.shape[-1]
        self.features[:, :n], self.features[:, n:] = features, 0


class GraphedDrafter(_BucketGraphs):
    """A stack of drafters' decoding forwards on a static cache, padded to BUCKETS rows, replayed from
    CUDA graphs: the drafting half of a step is many small forwards (the newly committed tokens, then
    one per tree level), each as launch-bound on a GPU as the target's. Same scheme as GraphedTarget;
    the cache grows (keeping what it holds, and the graphs are captured again) when a generation
    outgrows it. It has the stack's `forward` signature and `new_cache`; with `capture=False` (the
    default off CUDA) it runs the same static path eagerly, which is what the CPU tests check."""

    def __init__(self, drafter, buckets: tuple[int, ...] = BUCKETS, capture: bool | None = None):
        if not drafter.members:
            raise ValueError("GraphedDrafter runs a stack of drafters: see taps.models.stacked")
        self.drafter = drafter
        super().__init__(drafter.device, buckets, capture)

    def new_cache(self, capacity: int = 512) -> KVCache:
        """The static cache, emptied (allocated on first use, then kept with its graphs)."""
        if self.cache is None:
            self.cache = self.drafter.new_cache(capacity + self.buckets[-1])
            self._rebuild()
        self.cache.length = 0
        return self.cache

    def _fit(self, slots: int) -> None:
        if slots > self.capacity:
            self.cache.reserve(max(slots, 2 * self.capacity) + self.buckets[-1])
            self._rebuild()

    def _rebuild(self) -> None:
        self.capacity = self.cache.capacity - self.buckets[-1]
        self._hold_rotary(self.drafter, self.cache.capacity)
        self.inputs = {b: self._new_inputs(b) for b in self.buckets}
        self.graphs = {}

    def _new_inputs(self, rows: int) -> _DraftInputs:
        d = self.drafter
        return _DraftInputs(
            d.members, rows, self.cache.capacity, d.config.shape.hidden_size, d.dtype, d.device
        )

    @torch.inference_mode()
    def __call__(
        self, tokens, features, positions, cache: KVCache, tree_mask=None, keep: int | None = None
    ) -> torch.Tensor:
        """Drafter.forward on the static cache: tokens [N, n], features [N, n, H] -> hidden [N, n, H]
        (the last `keep` rows with `keep`: computed whole here, a GPU's graphs have fixed shapes)."""
        if cache is not self.cache:
            raise TapsError("a GraphedDrafter runs on its own cache: get it from new_cache()")
        n, start = tokens.shape[-1], cache.length
        self._fit(start + n)
        bucket = self._bucket(n)
        if bucket is None:  # longer than every bucket (a prompt's features): exact size, eagerly
            inputs = self._new_inputs(n)
            inputs.fill(tokens, features, positions, tree_mask, start, self.capacity)
            hidden = self._run(inputs)
        else:
            self.inputs[bucket].fill(tokens, features, positions, tree_mask, start, self.capacity)
            hidden = self._replay(bucket)[:, :n].clone()  # the graph's output is overwritten next replay
        cache.length = start + n
        return hidden if keep is None else hidden[:, -keep:]

    def _layers(self, inputs: _DraftInputs) -> torch.Tensor:
        return self.drafter.run_layers(
            inputs.tokens, inputs.features, inputs.positions, inputs.mask, self.cache, self.cache.capacity
        )

    def forward_at(self, tokens, features, tree_mask, base: torch.Tensor, drafted: int, level: int):
        """One drafting level inside a captured tree expansion (`TreeDrafter`): tokens [N, n] and features
        [N, n, H] at slots base + drafted + r and position base - 1 + level, each row seeing the
        committed slots (< base) and its drafted ancestors (`tree_mask` [N, 1, n, drafted + n] over the
        slots from base). `base` is a 0-dim device tensor: the step's offsets are device arithmetic,
        so one capture serves every step. Exact row counts (the expansion's shapes are fixed); the
        caller keeps the cache large enough (`reserve_rows`) and its `length` at the committed slots."""
        n, width, device = tokens.shape[-1], tree_mask.shape[-1], tokens.device
        columns = torch.arange(self.cache.capacity, device=device) - base  # slot - base
        inside = (columns >= 0) & (columns < width)
        in_tree = tree_mask.gather(-1, columns.clamp(0, width - 1).expand(*tree_mask.shape[:-1], -1))
        mask = (columns < 0) | (in_tree & inside)
        positions = (base - 1 + level).expand(n)
        self.cache.slots = base + drafted + torch.arange(n, device=device)
        try:
            return self.drafter.run_layers(tokens, features, positions, mask, self.cache, self.cache.capacity)
        finally:
            self.cache.slots = None

    def reserve_rows(self, slots: int) -> None:
        """Room for `slots` slots (grown, and every graph captured again, when it is short)."""
        self._fit(slots)


def accelerated(model, graphs: bool | None = None, rows: int | None = None):
    """What the generation loop should call, made once per model and kept on it: on CUDA (or with
    graphs=True) a GraphedTarget replaying CUDA graphs over BUCKETS; where decoding forwards are
    padded to one row count (`rows`, by default `invariant_rows`: bf16, see `taps.models.padded`) a
    GraphedTarget with that one bucket, run eagerly off CUDA; otherwise the model itself."""
    if isinstance(model, GraphedTarget):
        return model
    use_graphs = model.device.type == "cuda" if graphs is None else graphs
    rows = invariant_rows(model) if rows is None else rows
    if not use_graphs and rows < 2:
        return model
    made = model.__dict__.setdefault("_accelerated", {})
    if (use_graphs, rows) not in made:
        buckets = (rows,) if rows > 1 else BUCKETS
        capture = use_graphs and model.device.type == "cuda"
        made[use_graphs, rows] = GraphedTarget(model, buckets, capture=capture)
    return made[use_graphs, rows]
