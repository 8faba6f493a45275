"""The transformer blocks shared by the target and the drafter (llama, mistral, qwen2, qwen3 families).

A compact forward of our own instead of the `transformers` modules: it takes an explicit tree
attention mask and position ids and writes into a preallocated KV cache that can be compacted in
place, which is what speculative decoding needs, and it has far less per-layer overhead on a CPU.
Parameter names follow Hugging Face so checkpoints load without renaming.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from taps.errors import TapsError
from taps.models.packed import PackedMatmul, fuse

SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
CAUSAL = "causal"  # mask sentinel: plain causal attention with nothing cached (lets SDPA use its fast path)


@dataclass(frozen=True)
class ModelShape:
    """The architecture numbers of a decoder of a supported family, read from a HF `config.json`.

    The families differ in three places only: qwen2 puts biases on q/k/v, qwen3 normalises each query
    and key head (`head_norms`), and mistral (like qwen2/qwen3 with `use_sliding_window`) may attend
    over a sliding window, which equals full attention while the context fits in it: such a model's
    context is capped at its window (`max_position_embeddings`), so decoding stays exact."""

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    attention_bias: bool
    tie_word_embeddings: bool
    max_position_embeddings: int
    rope_scaling: dict | None = field(default=None, compare=False)

    @classmethod
    def from_hf_config(cls, cfg: dict) -> ModelShape:
        family = cfg.get("model_type", "?")
        if family not in SUPPORTED_FAMILIES:
            raise TapsError(
                f"model type {family!r} is not supported (taps runs {', '.join(SUPPORTED_FAMILIES)}); "
                "use a model of one of those families"
            )
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "llama3"):
            raise TapsError(
                f"rope scaling {rope_type!r} is not supported; use a model with default or llama3 rope"
            )
        heads = cfg["num_attention_heads"]
        return cls(
            family=family,
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
            attention_bias=bool(cfg.get("attention_bias", family == "qwen2")),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            max_position_embeddings=_full_attention_context(cfg),
            rope_scaling=rope if rope_type == "llama3" else None,
        )

    @property
    def head_norms(self) -> bool:
        """Whether each query and key head is RMS-normalised before rotary embedding (qwen3)."""
        return self.family == "qwen3"


def _full_attention_context(cfg: dict) -> int:
    """The longest context over which the model attends to every earlier token: its
    `max_position_embeddings`, capped at a sliding window where one is in use."""
    context = cfg.get("max_position_embeddings", 4096)
    window = cfg.get("sliding_window")
    sliding = cfg.get("use_sliding_window", cfg.get("model_type") == "mistral")
    if "sliding_attention" in (cfg.get("layer_types") or []):
        sliding = True
    return min(context, window) if sliding and window else context


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 as the reference implementations do; bf16 variance is too coarse.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Rotary:
    """cos/sin tables for rotary position embeddings, kept on the model's device.

    The sin table's first half is negated: rotating x is then x * cos + swap_halves(x) * sin, one op
    fewer per rotation than negating half of x each time, with the same bits (negation is exact).

    Grown from a host-side bound on the positions, never by reading `positions`, so looking them up
    costs no device-to-host sync on a GPU."""

    def __init__(self, shape: ModelShape):
        dim = shape.head_dim
        # on the host whatever device is current (a meta arange would import torch._dynamo, see
        # `target._Backbone`); `_build` moves the tables to the positions' device
        steps = torch.arange(0, dim, 2, dtype=torch.float64, device="cpu")
        inv_freq = 1.0 / (shape.rope_theta ** (steps / dim))
        if shape.rope_scaling is not None:
            inv_freq = _llama3_scaled(inv_freq, shape.rope_scaling)
        self.inv_freq = inv_freq.float()
        self._cos = self._sin = torch.empty(0)

    def __call__(
        self, positions: torch.Tensor, dtype: torch.dtype, bound: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin rows for `positions`, all of which the caller knows to be < `bound` (a host int)."""
        cos = self._cos
        if bound > cos.shape[0] or cos.dtype != dtype or cos.device != positions.device:
            self._build(max(bound, 2 * cos.shape[0], 256), dtype, positions.device)
        return self._cos[positions], self._sin[positions]

    def _build(self, length: int, dtype: torch.dtype, device: torch.device) -> None:
        angles = torch.outer(
            torch.arange(length, dtype=torch.float32, device=device), self.inv_freq.to(device)
        )
        sin = angles.sin()
        self._cos = torch.cat([angles, angles], dim=-1).cos().to(dtype)
        self._sin = torch.cat([-sin, sin], dim=-1).to(dtype)


def _llama3_scaled(inv_freq: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Llama-3.1 frequency scaling: long wavelengths slowed by `factor`, smooth in between."""
    factor, low, high = cfg["factor"], cfg.get("low_freq_factor", 1.0), cfg.get("high_freq_factor", 4.0)
    old_len = cfg["original_max_position_embeddings"]
    wavelen = 2 * torch.pi / inv_freq
    smooth = (old_len / wavelen - low) / (high - low)
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    mid = (wavelen <= old_len / low) & (wavelen >= old_len / high)
    return torch.where(mid, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [..., n, head_dim] with `Rotary`'s tables (sin's first half negated)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([x[..., half:], x[..., :half]], dim=-1) * sin


class KVCache:
    """Preallocated keys/values for every layer of one sequence, compacted in place.

    `length` counts the committed slots. A forward writes its new tokens right after them; after
    verification `compact` moves the accepted ones down so the cache holds exactly the accepted path
    (no recompute of the context).
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        capacity: int = 512,
        members: int | None = None,
        device: torch.device | str = "cpu",
    ):
        self.length = 0  # slots are dim -2; `members` adds a leading dim for a stack of drafters
        self.slots: torch.Tensor | None = None  # static mode (CUDA graphs): where a forward writes
        shape = (*([members] if members else []), num_kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[-2]

    @property
    def device(self) -> torch.device:
        return self.keys[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.keys[0].dtype

    def reserve(self, total: int) -> None:
        if total <= self.capacity:
            return
        new_cap = max(total, 2 * self.capacity)
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                grown = old.new_zeros((*old.shape[:-2], new_cap, old.shape[-1]))
                grown[..., : self.length, :] = old[..., : self.length, :]
                store[i] = grown

    def compact(self, start: int, slots: list[int]) -> None:
        """Make slots `slots` (absolute indices >= start, ascending) the cache tail from `start` on."""
        n = len(slots)
        if n and slots != list(range(start, start + n)):
            index = torch.tensor(slots, device=self.device)
            for store in (self.keys, self.values):
                for t in store:
                    t[..., start : start + n, :] = t[..., index, :]
        self.length = start + n


class Attention(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        h, hd = shape.hidden_size, shape.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = shape.num_heads, shape.num_kv_heads, hd
        self.q_proj = nn.Linear(h, shape.num_heads * hd, bias=shape.attention_bias)
        self.k_proj = nn.Linear(h, shape.num_kv_heads * hd, bias=shape.attention_bias)
        self.v_proj = nn.Linear(h, shape.num_kv_heads * hd, bias=shape.attention_bias)
        self.o_proj = nn.Linear(shape.num_heads * hd, h, bias=False)
        # per-head norms (qwen3), registered only there, so that state dicts match HF's
        self.q_norm = self.k_norm = None
        if shape.head_norms:
            self.q_norm, self.k_norm = RMSNorm(hd, shape.rms_norm_eps), RMSNorm(hd, shape.rms_norm_eps)
        self.qkv: PackedMatmul | None = None  # q, k and v as one packed matmul (CPU inference, `fuse`)

    def fuse(self) -> None:
        """Project q, k and v in one packed matmul (a no-op unless all three are packed alike)."""
        self.qkv = fuse([self.q_proj, self.k_proj, self.v_proj])

    def forward(
        self, x, cos, sin, mask, cache: KVCache | None, layer: int, keep: int | None = None
    ) -> torch.Tensor:
        """x: [n, H] (no batch) or [B, n, H] (training, no cache). mask: bool, True = may attend.
        `keep`: every row's keys and values go to the cache, but only the last `keep` rows attend and
        come out (see `DecoderLayer.forward`)."""
        *lead, n, _ = x.shape
        q, k, v = self._project(x, cos, sin)
        own_k, own_v = k, v
        if cache is not None and cache.slots is not None:  # static cache: whole capacity under the mask
            cache.keys[layer].index_copy_(-2, cache.slots, k.to(cache.dtype))
            cache.values[layer].index_copy_(-2, cache.slots, v.to(cache.dtype))
            k, v = cache.keys[layer], cache.values[layer]
        elif cache is not None:
            start = cache.length
            cache.keys[layer][..., start : start + n, :] = k
            cache.values[layer][..., start : start + n, :] = v
            k, v = cache.keys[layer][..., : start + n, :], cache.values[layer][..., : start + n, :]
        if keep is not None and keep < n:
            q, mask, n = q[..., -keep:, :], _last_rows(mask, keep, n, q.device), keep
        if isinstance(mask, str):
            # causal over nothing cached (a prompt): in the model's dtype, since plain and speculative
            # decoding share this prefill (a float64 one took 1.55x as long at 1000 tokens, bf16, CPU,
            # `benchmarks/attention_dtype.py`)
            out = _grouped_sdpa(q, own_k, own_v, mask)
        else:  # a cache kept wider than the model's dtype attends in its own (`padded.attention_dtype`)
            out = _grouped_sdpa(q.to(k.dtype), k, v, mask)
        out = out.to(x.dtype)
        return self.o_proj(out.transpose(-2, -3).reshape(*lead, n, self.num_heads * self.head_dim))

    def _project(self, x, cos, sin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k (rotated) and v, each [..., heads, n, head_dim]."""
        *lead, n, _ = x.shape
        heads, kv, hd = self.num_heads, self.num_kv_heads, self.head_dim
        if self.qkv is not None and self.q_norm is None:
            qkv = self.qkv(x).view(*lead, n, heads + 2 * kv, hd).transpose(-2, -3)
            qk = _rotate(qkv[..., : heads + kv, :, :], cos, sin)  # q and k in one pass
            return qk[..., :heads, :, :], qk[..., heads:, :, :], qkv[..., heads + kv :, :, :]
        if self.qkv is not None:
            q, k, v = self.qkv(x).view(*lead, n, heads + 2 * kv, hd).split([heads, kv, kv], dim=-2)
        else:
            q, k, v = (p(x).view(*lead, n, -1, hd) for p in (self.q_proj, self.k_proj, self.v_proj))
        if self.q_norm is not None:  # per head, before rotation (qwen3)
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(-2, -3) for t in (q, k, v))
        return _rotate(q, cos, sin), _rotate(k, cos, sin), v


def _last_rows(mask, keep: int, n: int, device: torch.device) -> torch.Tensor | None:
    """The attention mask of the last `keep` of `n` query rows (CAUSAL: over the n new keys alone)."""
    if mask is None:
        return None
    if isinstance(mask, str):  # row n - keep + r sees the new keys up to its own
        return None if keep == 1 else torch.ones(keep, n, dtype=torch.bool, device=device).tril_(n - keep)
    return mask[..., -keep:, :]


def _grouped_sdpa(q, k, v, mask) -> torch.Tensor:
    """Attention with fewer key/value heads than query heads (GQA), without copying keys and values.

    The query heads that share a key/value head attend as one longer query ([kv, groups x n, d]) under
    the mask repeated per group: the same sums as expanding k and v to every query head, without
    copying the whole cache once per step and layer (on the CI-class EPYC that copy and its
    bookkeeping took ~3.5 ms of a ~90 ms plain step). Causal attention over nothing cached (prefill,
    training) keeps the expansion: there is_causal lets SDPA skip the masked half, and a grouped query
    would break its row-to-position correspondence."""
    heads, kv_heads = q.shape[-3], k.shape[-3]
    if heads == kv_heads:
        return _sdpa(q, k, v, mask)
    groups = heads // kv_heads
    if isinstance(mask, str):
        # Expanding by hand keeps SDPA on its fused CPU kernel (enable_gqa forces the slow math path).
        return _sdpa(q, k.repeat_interleave(groups, dim=-3), v.repeat_interleave(groups, dim=-3), mask)
    *lead, _, n, hd = q.shape
    grouped_q = q.reshape(*lead, kv_heads, groups * n, hd)  # rows: (group member, token)
    if mask is not None:  # [..., n, w] -> [..., groups x n, w]
        mask = mask.unsqueeze(-3).expand(*mask.shape[:-2], groups, *mask.shape[-2:]).flatten(-3, -2)
    # reshape, not view: CUDA's kernels return the heads dim strided (the first H200 run of this path
    # failed every CUDA test here), CPU kernels a contiguous tensor, where reshape is a view
    return _sdpa(grouped_q, k, v, mask).reshape(*lead, heads, n, hd)


# On CUDA, attention runs on these kernels, never cuDNN's: torch puts cuDNN first on Hopper GPUs (H100,
# H200) when its runtime is new enough, and with an explicit mask, which the static cache always passes,
# cuDNN's attention has had silent errors in the torch versions the GPU machines carry (pytorch issues
# #191612, #196678 for masks over key lengths of 128k + 64, as this cache's 1024 + 64 slots; #193893).
# On the first H200 run every taps path opened its outputs with another token than transformers did.
CUDA_ATTENTION = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _sdpa(q, k, v, mask) -> torch.Tensor:
    """Attention on 4-D inputs only: 3-D inputs make torch fall back to a far slower CPU path."""
    if q.dim() == 3:
        return _sdpa(q[None], k[None], v[None], mask)[0]
    if q.is_cuda:
        with sdpa_kernel(CUDA_ATTENTION):
            return _attend(q, k, v, mask)
    return _attend(q, k, v, mask)


def _attend(q, k, v, mask) -> torch.Tensor:
    if isinstance(mask, str):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class MLP(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        self.gate_proj = nn.Linear(shape.hidden_size, shape.intermediate_size, bias=False)
        self.up_proj = nn.Linear(shape.hidden_size, shape.intermediate_size, bias=False)
        self.down_proj = nn.Linear(shape.intermediate_size, shape.hidden_size, bias=False)
        self.gate_up: PackedMatmul | None = None  # gate and up as one packed matmul (CPU inference, `fuse`)

    def fuse(self) -> None:
        """Project gate and up in one packed matmul (a no-op unless both are packed alike)."""
        self.gate_up = fuse([self.gate_proj, self.up_proj])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None:
            gate, up = self.gate_up(x).chunk(2, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, shape: ModelShape, input_norm: bool = True):
        super().__init__()
        # EAGLE drafters drop the first input norm: their input is already the fc projection.
        self.input_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps) if input_norm else nn.Identity()
        self.self_attn = Attention(shape)
        self.post_attention_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.mlp = MLP(shape)

    def fuse(self) -> None:
        """Fuse the packed projections that share an input (CPU inference; see `taps.models.packed.fuse`)."""
        self.self_attn.fuse()
        self.mlp.fuse()

    def forward(
        self, x, cos, sin, mask, cache: KVCache | None = None, layer: int = 0, keep: int | None = None
    ) -> torch.Tensor:
        """`keep`: the output of the last `keep` rows only; every row still writes its keys and values.
        A drafter's last layer takes it when it reads in committed tokens: only the last one's output
        is drafted from, the others are needed as keys and values alone, and attention, o_proj and the
        MLP are ~3/4 of the layer (on a ~1150-token prompt its first step read it all in)."""
        attended = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer, keep)
        x = (x if keep is None else x[..., -keep:, :]) + attended
        return x + self.mlp(self.post_attention_layernorm(x))


def attention_mask(
    n_new: int, n_cached: int, tree_mask: torch.Tensor | None, device: torch.device | str = "cpu"
) -> torch.Tensor | str | None:
    """Bool mask [..., n_new, n_cached + n_new]: causal over the new tokens, or `tree_mask`
    [..., n_new, w] over the last w slots (the new tokens, or the new ones and drafted ancestors
    still in the cache), every earlier slot seen by all (None when one new token sees everything,
    CAUSAL when nothing is cached)."""
    if tree_mask is None and (n_new == 1 or n_cached == 0):
        return None if n_new == 1 else CAUSAL
    if tree_mask is None:
        tree_mask = torch.ones(n_new, n_new, dtype=torch.bool, device=device).tril_()
    seen = n_cached + n_new - tree_mask.shape[-1]
    context = torch.ones(*tree_mask.shape[:-1], seen, dtype=torch.bool, device=tree_mask.device)
    return torch.cat([context, tree_mask], dim=-1)
