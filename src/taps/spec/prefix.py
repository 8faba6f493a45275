"""The last sequence's KV cache, kept for the next prompt that starts the same way.

A conversation's next turn is its previous prompt and reply plus a new message: prefilling all of it
again costs more with every turn (on a 2-core Zen 4 EPYC the default target reads a 2000-token prompt
in 2.5 s, about 100 tokens' worth of plain decoding). Kept, only the new tokens are read. The cache
holds exactly the committed path (verification compacts it), and the target features of the same
positions are kept beside it, so a drafter reads the whole context again from them at the cost of
its one layer. Where forwards run through static caches (CUDA graphs, padded rows: `taps.models.graphs`)
a prompt is read whole each time: a GPU reads thousands of tokens in milliseconds, and a padded
forward's rounding depends on its cache's size.
"""

from __future__ import annotations

import torch

from taps.models.layers import KVCache


class PrefixCache:
    """`ids[i]` is the token whose keys/values sit in slot i of `cache`; `features` the target's
    output rows at the same positions (what the proposer is handed)."""

    def __init__(self) -> None:
        self.model: object | None = None
        self.cache: KVCache | None = None
        self.ids: list[int] = []
        self.features: list[torch.Tensor] = []
        self.reused = 0  # prompt tokens the last `take` found in the cache

    def take(self, model, prompt_ids: list[int], capacity: int) -> tuple[KVCache, torch.Tensor | None]:
        """A cache for `prompt_ids` holding the longest prefix it shares with the last sequence (at
        least one prompt token is left to read: its logits give the first token), and that prefix's
        features (None when nothing is reused)."""
        reused = 0
        if self.cache is not None and self.model is model:
            limit = min(len(self.ids), len(prompt_ids) - 1)
            while reused < limit and self.ids[reused] == prompt_ids[reused]:
                reused += 1
        self.reused = reused
        if reused == 0:
            self.model, self.cache, self.ids, self.features = model, model.new_cache(capacity), [], []
            return self.cache, None
        features = torch.cat(self.features)[:reused]
        self.cache.length, self.ids, self.features = reused, self.ids[:reused], [features]
        self.cache.reserve(capacity)
        return self.cache, features

    def extend(self, ids: list[int], features: torch.Tensor) -> None:
        """Record the tokens (and their features) just committed to the cache, in slot order."""
        self.ids.extend(ids)
        self.features.append(features)
