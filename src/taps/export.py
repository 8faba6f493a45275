"""The bridge to other engines: taps drafters <-> the EAGLE checkpoint layout vLLM and SGLang load.

The layout followed is the EAGLE-1/2 draft model of the EAGLE reference code (SafeAILab/EAGLE,
`cnets.py`), as loaded by vLLM's `EagleLlamaForCausalLM` (`llama_eagle.py`, V1 engine,
`speculative_config={"method": "eagle", "model": DIR}`) and SGLang's `LlamaForCausalLMEagle` /
`Qwen2ForCausalLMEagle` (`--speculative-algorithm EAGLE --speculative-draft-model-path DIR`):

- `config.json`: the target's own HF config with `num_hidden_layers` = drafter layers;
- `model.safetensors`: `fc.weight` [H, 2H] over [embedding; feature], `fc.bias` (zeros when taps
  has none: SGLang's fc has a bias, vLLM skips it), `layers.N.*` with HF names, and no embedding or
  LM head (both engines share the target's);
- a reduced draft vocabulary is written in the EAGLE-3 convention: `d2t` (offsets, target id =
  draft id + d2t[draft id]), `t2d` (bool over the target vocabulary) and `draft_vocab_size` in the
  config, plus `hot_token_map.pt` (the draft token ids) for SGLang's `--speculative-token-map`, which
  makes SGLang draft over the same vocabulary. vLLM's EAGLE-1 loader ignores them and drafts over
  the full vocabulary; `taps import` restores them.

Read from vLLM main at commit 00da923 (`model_executor/models/llama_eagle.py`,
`transformers_utils/configs/eagle.py`) and SGLang main at commit 034b3be (`models/llama_eagle.py`,
`speculative/eagle_worker.py: load_token_map`).

`import_eagle` reads that layout (a `taps export` folder, or a public EAGLE/HASS checkpoint with
`model.safetensors` or `pytorch_model.bin`) and checks every tensor against the target.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from taps.errors import TapsError
from taps.files import atomic_dir
from taps.models.checkpoint import (
    FORMAT,
    check_fingerprint,
    load_drafter,
    read_config,
    save_drafter,
)
from taps.models.drafter import Drafter, DrafterConfig

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
SHAPE_FIELDS = {
    "hidden_size": "hidden_size",
    "vocab_size": "vocab_size",
    "intermediate_size": "intermediate_size",
    "num_attention_heads": "num_heads",
}


def export_eagle(drafter_dir: str | Path, target, out: str | Path) -> Path:
    """Write a taps drafter of `target` (a LoadedTarget) as an EAGLE draft-model folder, atomically."""
    drafter = load_drafter(drafter_dir, target.model)  # checks the target, keys and shapes
    source = read_config(drafter_dir)
    state = {k: v for k, v in load_file(str(Path(drafter_dir) / "model.safetensors")).items() if k != "d2t"}
    dtype = state["fc.weight"].dtype  # write exactly the stored numbers
    config = json.loads((target.path / "config.json").read_text())
    config.update(num_hidden_layers=drafter.config.num_layers, torch_dtype=str(dtype).removeprefix("torch."))
    config.pop("dtype", None)
    if not config.get("architectures"):  # configs converted from GGUF have none; the engines read it
        config["architectures"] = [ARCHITECTURES[drafter.config.shape.family]]
    state.setdefault("fc.bias", torch.zeros(drafter.config.shape.hidden_size, dtype=dtype))
    if drafter.config.draft_vocab_size:
        d2t = drafter.d2t.long()
        config["draft_vocab_size"] = len(d2t)
        state["d2t"] = d2t - torch.arange(len(d2t))
        state["t2d"] = torch.zeros(drafter.config.shape.vocab_size, dtype=torch.bool).index_fill_(
            0, d2t, True
        )
    config["taps"] = {"format": FORMAT, "target": source["target"], "card": source.get("card", {})}
    with atomic_dir(Path(out)) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if drafter.config.draft_vocab_size:
            torch.save(drafter.d2t.long().clone(), tmp / "hot_token_map.pt")
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    return Path(out)


def import_eagle(src: str | Path, target, out: str | Path) -> Path:
    """Read an EAGLE-1/2 draft-model folder into a taps drafter for `target`, after checking it fits."""
    src = Path(src)
    config = _read_json(src)
    _check_shape(config, target.model.shape, src)
    state = {k.removeprefix("model."): v for k, v in _read_weights(src).items()}
    if any(k.startswith("midlayer.") for k in state) or "lm_head.weight" in state:
        raise TapsError(
            f"{src} is an EAGLE-3 style checkpoint (own LM head / midlayer); taps imports EAGLE-1/2 and HASS "
            "drafters"
        )
    _check_embedding(state.pop("embed_tokens.weight", None), target.model, src)
    d2t = _draft_map(state, config, target.model.shape.vocab_size, src)
    layers = sorted({int(k.split(".")[1]) for k in state if k.startswith("layers.")})
    if layers != list(range(len(layers))) or not layers:
        raise TapsError(f"{src}: expected decoder layers 0..N-1 named layers.N.*, found {layers or 'none'}")
    bias = state.get("fc.bias")
    if bias is not None and not bias.any():
        del state[
            "fc.bias"
        ]  # the zeros `taps export` adds for SGLang; dropping them keeps outputs bit-identical
    drafter = Drafter(
        DrafterConfig(
            target.model.shape, len(layers), len(d2t) if d2t is not None else None, "fc.bias" in state
        )
    )
    expected = drafter.state_dict()
    state["d2t"] = d2t if d2t is not None else expected["d2t"]
    _check_keys(state, expected, src)
    dtype = state["fc.weight"].dtype
    drafter.to(dtype).load_state_dict(state)
    taps = config.get("taps") or {}
    if taps.get("target"):
        check_fingerprint(taps["target"], target.model.fingerprint(), src)
    card = taps.get("card") or {"imported_from": str(src.resolve())}
    return save_drafter(drafter, out, target.model.fingerprint(), card)


def _read_json(src: Path) -> dict:
    if not (src / "config.json").is_file():
        raise TapsError(f"{src} has no config.json; point `taps import` at an EAGLE draft-model folder")
    try:
        return json.loads((src / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise TapsError(f"{src / 'config.json'} is not valid JSON ({exc})") from exc


def _read_weights(src: Path) -> dict[str, torch.Tensor]:
    files = sorted(src.glob("*.safetensors"))
    try:
        if files:
            return {k: v for f in files for k, v in load_file(str(f)).items()}
        if (src / "pytorch_model.bin").is_file():
            return torch.load(src / "pytorch_model.bin", map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise TapsError(
            f"cannot read the weights in {src} ({exc}); the checkpoint is truncated or corrupt"
        ) from exc
    raise TapsError(f"{src} has no model.safetensors or pytorch_model.bin")


def _check_shape(config: dict, shape, src: Path) -> None:
    if "model_type" not in config:
        raise TapsError(
            f"{src / 'config.json'} names no model_type; point `taps import` at an EAGLE draft-model folder"
        )
    if config.get("model_type") != shape.family:
        raise TapsError(
            f"{src} is a {config.get('model_type')!r} drafter but the target is {shape.family!r}; import it "
            "for a matching target"
        )
    for key, attr in SHAPE_FIELDS.items():
        if config.get(key) != getattr(shape, attr):
            raise TapsError(
                f"{src} was made for a model with {key} {config.get(key)}, the target has "
                f"{getattr(shape, attr)}; "
                "import it with the target it was trained for (--target)"
            )


def _check_embedding(embedding: torch.Tensor | None, model, src: Path) -> None:
    """Public EAGLE checkpoints carry a copy of their target's embedding: it must be this target's."""
    if embedding is None:
        return
    ours = model.model.embed_tokens.weight
    if embedding.shape != ours.shape or not torch.allclose(
        embedding.float(), ours.float(), atol=1e-2, rtol=1e-2
    ):
        raise TapsError(
            f"{src} holds the embedding of another model; it was trained for a different target (--target)"
        )


def _draft_map(state: dict, config: dict, vocab: int, src: Path) -> torch.Tensor | None:
    offsets = state.pop("d2t", None)
    state.pop("t2d", None)
    if offsets is None:
        return None
    d2t = torch.arange(len(offsets)) + offsets.long()
    if config.get("draft_vocab_size", len(d2t)) != len(d2t) or d2t.min() < 0 or d2t.max() >= vocab:
        raise TapsError(
            f"{src}: d2t does not map {config.get('draft_vocab_size')} draft tokens into the target's {vocab}"
        )
    return d2t


def _check_keys(state: dict, expected: dict, src: Path) -> None:
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing:
        raise TapsError(
            f"{src}: the checkpoint lacks {missing[0]} ({len(missing)} tensors missing); it is incomplete"
        )
    if extra:
        raise TapsError(
            f"{src}: unexpected tensor {extra[0]} ({len(extra)} unknown); this is not an EAGLE-1/2 drafter"
        )
    bad = [k for k in expected if state[k].shape != expected[k].shape]
    if bad:
        raise TapsError(
            f"{src}: {bad[0]} has shape {tuple(state[bad[0]].shape)}, the target needs "
            f"{tuple(expected[bad[0]].shape)}"
        )
