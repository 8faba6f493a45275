"""The last sequences' KV caches, kept for the next prompt that starts the same way.

A conversation's next turn is its previous prompt and reply plus a new message: prefilling all of it
again costs more with every turn (on a 2-core Zen 4 EPYC the default target reads a 2000-token prompt
in 2.5 s, about 100 tokens' worth of plain decoding). Kept, only the new tokens are read. A cache
holds exactly the committed path (verification compacts it), and the target features of the same
positions are kept beside it, so a drafter reads the whole context again from them at the cost of
its one layer.

Several sequences can be kept (a server's clients take turns): a prompt continues the kept sequence
it shares the most with when it shares at least half of it (a next turn, or requests repeating a
long few-shot start); a prompt that shares less (a new conversation under the same system prompt)
starts a sequence of its own with a copy of the shared rows, so that it never cuts another
conversation's cache short. The least recently used sequence makes room.

Where forwards run through static caches (CUDA graphs, padded rows: `taps.models.graphs`) a prompt is
read whole each time: a GPU reads thousands of tokens in milliseconds, and a padded forward's
rounding depends on its cache's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from taps.models.layers import KVCache


@dataclass
class KeptSequence:
    """`ids[i]` is the token whose keys/values sit in slot i of `cache`; `features` the target's
    output rows at the same positions (what the proposer is handed)."""

    cache: KVCache
    ids: list[int] = field(default_factory=list)
    features: list[torch.Tensor] = field(default_factory=list)

    def shared(self, prompt_ids: list[int]) -> int:
        """Leading tokens this sequence shares with the prompt, leaving at least one prompt token to
        read (its logits give the first new token)."""
        limit, n = min(len(self.ids), len(prompt_ids) - 1), 0
        while n < limit and self.ids[n] == prompt_ids[n]:
            n += 1
        return n

    def truncate(self, n: int) -> torch.Tensor | None:
        """Keep the first n positions; their features (None for none)."""
        features = torch.cat(self.features)[:n] if n else None
        self.cache.length, self.ids, self.features = n, self.ids[:n], [features] if n else []
        return features


class PrefixCache:
    """Up to `sequences` kept sequences of one model, the most recently used last."""

    def __init__(self, sequences: int = 1) -> None:
        if sequences < 1:
            raise ValueError(f"a prefix cache keeps at least one sequence, got {sequences}")
        self.sequences, self.model = sequences, None
        self.kept: list[KeptSequence] = []
        self.reused = 0  # prompt tokens the last `take` found kept

    def take(self, model, prompt_ids: list[int], capacity: int) -> tuple[KVCache, torch.Tensor | None]:
        """A cache for `prompt_ids` holding the longest prefix it shares with a kept sequence, and
        that prefix's features (None when nothing is reused)."""
        if self.model is not model:
            self.model, self.kept = model, []
        shared = ((s.shared(prompt_ids), s) for s in self.kept)
        self.reused, best = max(shared, key=lambda pair: pair[0], default=(0, None))
        if best is not None and self.reused and 2 * self.reused >= len(best.ids):  # a continuation
            self.kept.remove(best)
            current, features = best, best.truncate(self.reused)
        else:
            current = KeptSequence(model.new_cache(capacity))
            features = _copy_prefix(best, current, self.reused) if self.reused else None
            if len(self.kept) >= self.sequences:
                self.kept.pop(0)
        self.kept.append(current)
        current.cache.reserve(capacity)
        return current.cache, features

    def extend(self, ids: list[int], features: torch.Tensor) -> None:
        """Record the tokens (and their features) just committed to the cache taken last."""
        self.kept[-1].ids.extend(ids)
        self.kept[-1].features.append(features)


def _copy_prefix(source: KeptSequence, into: KeptSequence, n: int) -> torch.Tensor:
    """Start `into` with a copy of the first n positions of `source` (which stays as it is)."""
    into.cache.reserve(n)
    for store, copied in ((into.cache.keys, source.cache.keys), (into.cache.values, source.cache.values)):
        for mine, theirs in zip(store, copied):
            mine[..., :n, :] = theirs[..., :n, :]
    features = torch.cat(source.features)[:n]
    into.cache.length, into.ids, into.features = n, source.ids[:n], [features]
    return features
