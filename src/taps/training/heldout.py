"""Acceptance length of a freshly trained drafter on held-out conversations of its own corpora."""

from __future__ import annotations

import json
from pathlib import Path

from taps.data.chat import encode_chat
from taps.data.corpora import load_corpus, split
from taps.drafters import make_proposer
from taps.files import write_json_atomic
from taps.spec.generate import GenerationConfig, SpeculativeGenerator


def heldout_tau(
    target,
    drafter_dir: Path,
    corpora: list[str],
    data_dir,
    seed: int,
    prompts: int = 16,
    max_new_tokens: int = 64,
) -> float:
    """Mean tau (T = 0) over the first user turns of held-out conversations; written into the model card."""
    held = []
    for name in dict.fromkeys(c.split("+")[0] for c in corpora):
        _, part = split(load_corpus(name, data_dir, seed=seed), 64, seed=seed)
        held += part[: max(1, prompts // len({c.split("+")[0] for c in corpora}))]
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
