"""TargetModel: the model being accelerated, with one forward for prefill, decoding and tree verification.

`forward` runs new tokens (plus, when verifying, a draft tree under an ancestor mask with
depth-based positions) on top of the KV cache and returns the last hidden states after the final
norm: the features EAGLE drafters read, from which `logits` computes the next-token scores.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from taps.errors import TapsError
from taps.models.layers import DecoderLayer, KVCache, ModelShape, RMSNorm, Rotary, attention_mask
from taps.models.packed import PackedLinear, pack_linears, reading_in


class _Backbone(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        # Left uninitialised: the weights always come from a checkpoint (`TargetModel.from_dir` builds
        # on the meta device), and a meta normal_ runs through torch._refs, whose first use imports
        # torch._dynamo (~2 s alone on a 2-core CPU; ~0.3 s of a command's start, as transformers'
        # tokenizer loading imports most of the same modules anyway).
        size = (shape.vocab_size, shape.hidden_size)
        self.embed_tokens = nn.Embedding(*size, _weight=torch.empty(size))
        self.layers = nn.ModuleList(DecoderLayer(shape) for _ in range(shape.num_layers))
        self.norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps)


class TargetModel(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        self.shape = shape
        self.model = _Backbone(shape)
        self.lm_head = nn.Linear(shape.hidden_size, shape.vocab_size, bias=False)
        if shape.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.rotary = Rotary(shape)
        self.requires_grad_(False)

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def attention_dtype(self) -> torch.dtype:
        """The dtype the KV cache holds and attention sums in (`taps.models.padded.attention_dtype`)."""
        from taps.models.padded import attention_dtype

        return attention_dtype(self)

    def new_cache(self, capacity: int = 512, dtype: torch.dtype | None = None) -> KVCache:
        """A cache in `attention_dtype`, or in `dtype` (the static path's own, `taps.models.graphs`)."""
        s = self.shape
        dtype = dtype or self.attention_dtype
        return KVCache(s.num_layers, s.num_kv_heads, s.head_dim, dtype, capacity, device=self.device)

    @torch.inference_mode()
    def forward(
        self,
        tokens: torch.Tensor,
        cache: KVCache,
        positions: torch.Tensor | None = None,
        tree_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run `tokens` [n] after the cache's committed slots; returns normed hidden states [n, H].

        Without `tree_mask` the new tokens are causal; with it ([n, n] bool, True = may attend)
        they see all committed slots plus what the mask allows, at the given `positions`.
        The new keys/values sit in slots `cache.length ..` and are committed (the caller compacts).
        """
        n, start = tokens.shape[0], cache.length
        if positions is None:
            positions = torch.arange(start, start + n, device=tokens.device)
        cache.reserve(start + n)
        mask = attention_mask(n, start, tree_mask, tokens.device)
        with reading_in(n, tree_mask):  # a prompt's wide matmuls run whole
            hidden = self.run_layers(tokens, positions, mask, cache, start + n)  # tree positions < start + n
        cache.length = start + n
        return hidden

    def run_layers(self, tokens, positions, mask, cache: KVCache, bound: int) -> torch.Tensor:
        """Embedding, decoder layers, final norm: the forward with the mask already made and no cache
        bookkeeping (`bound`: every position is below it). A static cache (`cache.slots` set, see
        `taps.models.graphs`) takes the keys/values at those slots and a mask over its whole capacity."""
        cos, sin = self.rotary(positions, self.dtype, bound)
        x = self.model.embed_tokens(tokens)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, mask, cache, i)
        return self.model.norm(x)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    def pack_for_cpu(self) -> TargetModel:
        """Inference on the CPU: every linear layer (LM head included) runs on oneDNN-packed weights
        (see `taps.models.packed`), with q/k/v and gate/up fused; in place, and a no-op on other devices."""
        pack_linears(self, exact=True)  # verification must round each row as a plain step does
        for layer in self.model.layers:
            layer.fuse()
        return self

    @property
    def packed(self) -> bool:
        """Whether its linear layers run on packed CPU kernels (`pack_for_cpu` found one for its dtype)."""
        return isinstance(self.lm_head, PackedLinear)

    @property
    def row_floor(self) -> int:
        """The fewest rows the packed matmuls run (`set_row_floor`; 1: as many as given)."""
        return self.__dict__.get("_row_floor", 1)

    def set_row_floor(self, rows: int) -> None:
        """Run every packed matmul of the target on at least `rows` rows, padding with zero rows.

        Why: on some CPUs the matmul kernels stream weights more slowly for 1-2 rows than for 4-6
        (a Zen 4 EPYC, oneDNN, float32: a 1-token forward 48.1 ms, 2 tokens 55.4, 4 tokens 39.4), so a
        plain step costs less padded. A row's bits do not depend on the rows beside it (the packed
        kernels are probed for that), so outputs do not change; attention still sees the real rows
        only. `taps.spec.costs.row_floor` picks `rows` from the measured cost curve."""
        if rows < 1:
            raise TapsError(f"a row floor is a row count >= 1, got {rows}")
        for packed in _packed_matmuls(self):
            packed.min_rows = rows
        self._row_floor = rows

    def fingerprint(self) -> dict:
        """What a drafter must match: architecture, sizes and a hash of the embedding it reuses."""
        emb = self.model.embed_tokens.weight.detach().float()
        probe = (
            emb[:: max(1, emb.shape[0] // 256)].to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes()
        )
        return {
            "family": self.shape.family,
            "hidden_size": self.shape.hidden_size,
            "vocab_size": self.shape.vocab_size,
            "embedding_sha256": hashlib.sha256(probe).hexdigest()[:16],
        }

    @classmethod
    def from_dir(
        cls, path: str | Path, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu"
    ) -> TargetModel:
        """Load a Hugging Face model directory (config.json + safetensors) of a supported family
        (`layers.SUPPORTED_FAMILIES`)."""
        path = Path(path)
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise TapsError(
                f"{path} has no config.json; pass a Hugging Face model directory, a .gguf file or a target "
                "name"
            )
        shape = ModelShape.from_hf_config(json.loads(cfg_file.read_text()))
        with torch.device("meta"):
            model = cls(shape)
        state = _read_safetensors(path)
        if shape.tie_word_embeddings:
            state.pop("lm_head.weight", None)
        expected = {
            k for k in model.state_dict() if not (shape.tie_word_embeddings and k == "lm_head.weight")
        }
        missing = sorted(expected - state.keys())
        if missing:
            raise TapsError(
                f"{path}: weights are missing {len(missing)} tensors (e.g. {missing[0]}); the checkpoint is "
                f"incomplete or not a {shape.family} model"
            )
        model.load_state_dict(
            {k: v.to(device, dtype) for k, v in state.items() if k in expected}, strict=False, assign=True
        )
        if shape.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        model.rotary = Rotary(shape)
        return model.eval()


def _packed_matmuls(model: TargetModel) -> list:
    """The target's packed matmuls: its packed linear layers and the fused q/k/v and gate/up."""
    layers = [m for m in model.modules() if isinstance(m, PackedLinear)]
    fused = [p for layer in model.model.layers for p in (layer.self_attn.qkv, layer.mlp.gate_up)]
    return layers + [p for p in fused if p is not None]


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise TapsError(f"{path} has no *.safetensors weights; convert the checkpoint to safetensors first")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                for key in sf.keys():
                    state[key] = sf.get_tensor(key)
        except Exception as exc:  # safetensors raises several types for truncated / corrupt files
            raise TapsError(
                f"cannot read {f} ({exc}); the file is truncated or corrupt, re-create it"
            ) from exc
    return state
