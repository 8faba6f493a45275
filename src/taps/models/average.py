"""Checkpoint (weight) averaging: one drafter whose parameters are the weighted mean of several.

The paper's naive baseline for combining specialised drafters; it only makes sense for drafters
of the same target, shape and draft vocabulary, which is checked.
"""

from __future__ import annotations

from pathlib import Path

import torch

from taps.errors import TapsError
from taps.models.checkpoint import load_drafter, read_config, save_drafter
from taps.models.drafter import Drafter


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
            raise TapsError(f"{p} belongs to another target than {paths[0]}; average drafters of one target only")
        if c["drafter"] != configs[0]["drafter"]:
            raise TapsError(f"{p} has another shape or draft vocabulary size than {paths[0]}; they cannot be averaged")
    drafters = [load_drafter(p, dtype=torch.float32) for p in paths]
    for p, d in zip(paths[1:], drafters[1:]):
        if not torch.equal(d.d2t, drafters[0].d2t):
            raise TapsError(f"{p} uses another draft vocabulary than {paths[0]}; they cannot be averaged")
    total = sum(weights)
    state = {k: sum(w / total * d.state_dict()[k].float() for w, d in zip(weights, drafters))
             for k in drafters[0].state_dict() if k != "d2t"}
    out = drafters[0]
    out.load_state_dict(state | {"d2t": drafters[0].d2t}, strict=True)
    return out, configs[0]["target"]


def write_average(paths: list[Path], out: Path, weights: list[float] | None = None) -> Path:
    drafter, fingerprint = average_drafters(paths, weights)
    card = {"method": "weight-average", "members": [str(p) for p in paths], "weights": weights or [1.0] * len(paths)}
    return save_drafter(drafter.to(torch.bfloat16), out, fingerprint, card)
