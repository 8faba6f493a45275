"""Drafter: the EAGLE head, a feature-level draft model that rides on the target.

Input at position t is [embedding of token t+1; feature at t] (the target's last hidden state for
verified tokens, the drafter's own output for drafted ones), projected 2H -> H by `fc` and run
through one decoder layer of the target's family; the output is a predicted feature, scored by the
target's own frozen LM head. The embedding and head are borrowed from the target, never stored.
An optional reduced draft vocabulary (EAGLE-3's `d2t` map) scores only the `draft_vocab_size` most
useful tokens, because on a CPU the full head dominates a drafting step; on a GPU, where it is one
more small matmul, drafters score the whole vocabulary by default (`widen_vocabulary`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from taps.models.layers import DecoderLayer, KVCache, ModelShape, Rotary, attention_mask
from taps.models.packed import INT8, ONEDNN, Kernel, PackedMatmul, drafting_kernel, pack_linears, packed


@dataclass(frozen=True)
class DrafterConfig:
    """What defines a drafter's shape; saved in its `config.json` with the target fingerprint."""

    shape: ModelShape
    num_layers: int = 1
    draft_vocab_size: int | None = None  # None: the target's full vocabulary
    fc_bias: bool = False  # the original EAGLE code has a bias on fc; imported checkpoints may carry one

    def to_dict(self) -> dict:
        return {
            "shape": asdict(self.shape),
            "num_layers": self.num_layers,
            "draft_vocab_size": self.draft_vocab_size,
            "fc_bias": self.fc_bias,
        }

    @classmethod
    def from_dict(cls, d: dict) -> DrafterConfig:
        return cls(
            shape=ModelShape(**d["shape"]),
            num_layers=d["num_layers"],
            draft_vocab_size=d.get("draft_vocab_size"),
            fc_bias=d.get("fc_bias", False),
        )


class Drafter(nn.Module):
    def __init__(self, config: DrafterConfig):
        super().__init__()
        s = config.shape
        self.config = config
        self.fc = nn.Linear(2 * s.hidden_size, s.hidden_size, bias=config.fc_bias)
        self.layers = nn.ModuleList(DecoderLayer(s, input_norm=i > 0) for i in range(config.num_layers))
        vocab = config.draft_vocab_size or s.vocab_size
        # d2t[i] = target token id of draft token i (identity for the full vocabulary).
        self.register_buffer("d2t", torch.arange(vocab), persistent=True)
        self.rotary = Rotary(s)
        self.head_weight: torch.Tensor | None = None
        self.packed_head: PackedMatmul | None = None  # CPU inference only, see `pack_for_cpu`
        self.members: int | None = None  # set on a stack of drafters (see taps.models.stacked)

    def attach(self, target) -> Drafter:
        """Borrow the target's frozen embedding and LM-head rows (restricted to the draft vocabulary).

        Stored outside the module registry, so they are neither saved nor trained with the drafter.
        The whole head stays at hand (`target_head`) for tokens added per sequence
        (`taps.spec.vocabulary`).
        """
        self.__dict__["embed"] = target.model.embed_tokens
        self.__dict__["target_head"] = target.lm_head.weight.detach()
        self.refresh_head(target)
        return self

    def refresh_head(self, target) -> None:
        weight = target.lm_head.weight.detach()
        self.head_weight = weight[self.d2t.to(weight.device)].to(self.fc.weight.device, self.fc.weight.dtype)

    def widen_vocabulary(self, target) -> Drafter:
        """Score the target's whole vocabulary, not just the draft vocabulary trained over.

        The head is the target's frozen LM head, so this needs no training: the drafter's predicted
        feature scores every token as the target's head would. Why: a reduced vocabulary can never
        draft the prompt-specific words the target copies (' orbital', ' glucose': 10.7% of the
        tokens eagle2-chat's target wrote on MT-Bench lie outside its 8192), and over the whole
        vocabulary tau rose on every cell measured (CI-class EPYC, float32, fixed 8/5/24 tree, 10
        prompts, T = 0): eagle2-chat MT-Bench / GSM8K 2.49 / 2.38 -> 2.55 / 2.50, eagle2-math
        3.41 / 1.96 -> 3.47 / 2.00 (GSM8K / MT-Bench); at T = 1 it was level. On a GPU the 6x
        larger head is one more small matmul a level; on a CPU the head already dominates a
        drafting step, so there drafters keep their trained vocabulary, grown by the context's
        tokens (`taps.spec.vocabulary`), by default."""
        self.config = replace(self.config, draft_vocab_size=None)
        self.d2t = torch.arange(self.config.shape.vocab_size, device=self.d2t.device)
        self.packed_head = None
        self.refresh_head(target)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.fc.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.fc.weight.device

    def new_cache(self, capacity: int = 512) -> KVCache:
        s = self.config.shape
        return KVCache(
            self.config.num_layers,
            s.num_kv_heads,
            s.head_dim,
            self.dtype,
            capacity,
            self.members,
            self.device,
        )

    def forward(
        self,
        tokens: torch.Tensor,
        features: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | None = None,
        tree_mask: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        keep: int | None = None,
    ) -> torch.Tensor:
        """Predicted next features for pairs (features[i], tokens[i]).

        Decoding: 1-D inputs on top of `cache` (causal, or `tree_mask` over the last slots: see
        `attention_mask`); a stack of drafters takes [members, n] inputs. `keep`: predict for the
        last `keep` pairs only (all of them still enter the cache).
        Training: batched inputs [B, n] / [B, n, H] with a full `mask` and no cache.
        """
        n = tokens.shape[-1]
        if cache is not None:
            cache.reserve(cache.length + n)
            if mask is None:
                mask = attention_mask(n, cache.length, tree_mask, tokens.device)
        # positions never exceed the slots in use: the cache's plus the new ones (training: the sequence)
        bound = (cache.length if cache is not None else 0) + n
        x = self.run_layers(tokens, features, positions, mask, cache, bound, keep)
        if cache is not None:
            cache.length += n
        return x

    def run_layers(
        self, tokens, features, positions, mask, cache: KVCache | None, bound: int, keep: int | None = None
    ) -> torch.Tensor:
        """fc and decoder layers with the mask already made and no cache bookkeeping (`bound`: every
        position is below it). A static cache (`cache.slots` set, see `taps.models.graphs`) takes the
        keys/values at those slots and a mask over its whole capacity. `keep`: the last layer outputs
        the last `keep` rows only (`DecoderLayer.forward`)."""
        x = self.fc(torch.cat([self.embed(tokens).to(self.dtype), features.to(self.dtype)], dim=-1))
        cos, sin = self.rotary(positions, self.dtype, bound)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, cache, i, keep if i == last else None)
        return x

    def draft_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores over the draft vocabulary (map ids back with `d2t`)."""
        if self.packed_head is not None:
            return self.packed_head(hidden).float()
        return (hidden.to(self.head_weight.dtype) @ self.head_weight.mT).float()

    def pack_for_cpu(self, kernel: Kernel | None = None) -> Drafter:
        """Inference on the CPU: linear layers and head on a packed kernel (see `taps.models.packed`;
        by default int8 where the CPU lacks native bf16, else oneDNN); in place, a no-op elsewhere."""
        kernel = kernel or drafting_kernel(self.dtype)
        if kernel is INT8 and self.device.type == "cpu" and ONEDNN.runs(self.dtype):
            # fc's input is [token embedding | target feature], halves ~40x apart in size: one int8
            # scale per call flattens the embedding half (tau 3.43 -> 2.67; see `taps.models.packed`)
            self.fc = packed(self.fc, ONEDNN)
        pack_linears(self, kernel)
        for layer in self.layers:
            layer.fuse()
        if self.head_weight is not None:
            self.packed_head = PackedMatmul.of(self.head_weight, kernel)
        return self
