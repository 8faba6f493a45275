"""Checkpoint (weight) averaging: one drafter whose parameters are the weighted mean of several.

The paper's naive baseline for combining specialised drafters; it only makes sense for drafters
of the same target and shape, which is checked. Members may have different reduced draft
vocabularies (each picked from its own corpus): the vocabulary is not a learned parameter (its head
rows are the target's), so the average drafts over the union of the members' vocabularies.
"""

from __future__ import annotations

from pathlib import Path

import torch

from taps.errors import TapsError
from taps.models.checkpoint import load_drafter, read_config, save_drafter
from taps.models.drafter import Drafter, DrafterConfig


def average_drafters(paths: list[Path], weights: list[float] | None = None) -> tuple[Drafter, dict]:
    """The averaged drafter (float32) and the common target fingerprint."""
    if len(paths) < 2:
        raise TapsError("averaging needs at least two drafters")
    weights = weights or [1.0] * len(paths)
    if len(weights) != len(paths) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise TapsError("give one non-negative weight per drafter (not all zero)")
    configs = [read_config(p) for p in paths]
    for p, c in zip(paths[1:], configs[1:]):
        if c["target"] != configs[0]["target"]:
            raise TapsError(
                f"{p} belongs to another target than {paths[0]}; average drafters of one target only"
            )
        if _shape_of(c) != _shape_of(configs[0]):
            raise TapsError(f"{p} has another shape than {paths[0]}; they cannot be averaged")
    drafters = [load_drafter(p, dtype=torch.float32) for p in paths]
    vocab = torch.unique(torch.cat([d.d2t for d in drafters]))  # sorted union
    full = len(vocab) == drafters[0].config.shape.vocab_size
    config = DrafterConfig.from_dict(
        configs[0]["drafter"] | {"draft_vocab_size": None if full else len(vocab)}
    )
    total = sum(weights)
    state = {
        k: sum(w / total * d.state_dict()[k].float() for w, d in zip(weights, drafters))
        for k in drafters[0].state_dict()
        if k != "d2t"
    }
    out = Drafter(config)
    out.load_state_dict(state | {"d2t": vocab}, strict=True)
    return out.requires_grad_(False).eval(), configs[0]["target"]


def _shape_of(config: dict) -> dict:
    """The drafter's shape as DrafterConfig reads it: a config.json written before a field existed
    (say `fc_bias`) has the same shape as one that spells out that field's default."""
    return DrafterConfig.from_dict(config["drafter"]).to_dict() | {"draft_vocab_size": None}


def write_average(paths: list[Path], out: Path, weights: list[float] | None = None) -> Path:
    drafter, fingerprint = average_drafters(paths, weights)
    card = {
        "method": "weight-average",
        "members": [str(p) for p in paths],
        "weights": weights or [1.0] * len(paths),
    }
    return save_drafter(drafter.to(torch.bfloat16), out, fingerprint, card)
