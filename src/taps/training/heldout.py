"""Acceptance length of a freshly trained drafter on held-out conversations of its own corpora."""

from __future__ import annotations

import json
from pathlib import Path

from taps.data.chat import encode_chat
from taps.data.corpora import load_corpus, split
from taps.drafters import make_proposer
from taps.files import write_json_atomic
from taps.spec.generate import GenerationConfig, SpeculativeGenerator


def heldout_conversations(corpora: list[str], data_dir, seed: int, prompts: int = 16) -> list:
    """The held-out conversations of the drafter's corpora (the split features and training left out).

    `taps train` loads them before training, so that a corpus missing here fails in seconds rather
    than after an hour of training, with the drafter saved but no held-out tau and no card."""
    names = list(dict.fromkeys(c.split("+")[0] for c in corpora))
    held = []
    for name in names:
        _, part = split(load_corpus(name, data_dir, seed=seed), 64, seed=seed)
        held += part[: max(1, prompts // len(names))]
    return held


def heldout_tau(target, drafter_dir: Path, held: list, max_new_tokens: int = 64) -> float:
    """Mean tau (T = 0) over the first user turns of `held` conversations; written into the model card."""
    gen = SpeculativeGenerator(target.model, make_proposer(str(drafter_dir), target))
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_ids=target.eos_token_ids)
    steps = []
    for conv in held:
        out = gen.generate(encode_chat(target.tokenizer, [conv[0]]), config)
        steps += [s.accepted + 1 for s in out.steps]
    tau = sum(steps) / max(1, len(steps))
    cfg_file = drafter_dir / "config.json"
    config_json = json.loads(cfg_file.read_text())
    config_json["card"]["heldout_tau"] = {
        "tau": round(tau, 3),
        "prompts": len(held),
        "max_new_tokens": max_new_tokens,
        "temperature": 0,
    }
    write_json_atomic(cfg_file, config_json)
    return tau
