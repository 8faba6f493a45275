"""Acceptance length of a freshly trained drafter on held-out conversations of its own corpora."""

from __future__ import annotations

import json
from pathlib import Path

from taps.data.chat import encode_chat
from taps.data.corpora import load_corpus, split
from taps.drafters import make_proposer
from taps.files import write_json_atomic
from taps.spec.generate import GenerationConfig, SpeculativeGenerator


def heldout_conversations(sources: list[tuple[str, int, int]], data_dir, prompts: int = 16) -> list:
    """The held-out conversations of the drafter's corpora: for each (corpus, seed, held_out), the
    split that features or online training left out (`split`), so that none was trained on.

    `taps train` loads them before training, so that a corpus missing here fails in seconds rather
    than after an hour of training, with the drafter saved but no held-out tau and no card. A corpus
    that held none out (`--held-out 0`) gives none."""
    by_name = {name.split("+")[0]: (seed, held_out) for name, seed, held_out in sources}
    held = []
    for name, (seed, held_out) in by_name.items():
        if held_out:
            _, part = split(load_corpus(name, data_dir, seed=seed), held_out, seed=seed)
            held += part[: max(1, prompts // len(by_name))]
    return held


def feature_selection(manifest: dict) -> tuple[str, int, int]:
    """(corpus, seed, held_out) a feature folder was made with (folders from before the selection was
    recorded were all made with the defaults, seed 0 and 64 held out)."""
    chosen = manifest.get("selection", {})
    return manifest["corpus"], chosen.get("seed", 0), chosen.get("held_out", 64)


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
