"""EAGLE-format export and import: lossless round trip, the layout other engines read, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from taps.errors import TapsError
from taps.export import export_eagle, import_eagle
from taps.models.catalog import LoadedTarget
from taps.models.checkpoint import load_drafter, save_drafter
from taps.models.target import TargetModel
from tests.conftest import random_drafter


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def target(request, tiny_dirs) -> LoadedTarget:
    path = tiny_dirs[request.param]
    return LoadedTarget(request.param, path, TargetModel.from_dir(path, dtype=torch.float32), tokenizer=None)


def saved_drafter(target, folder, draft_vocab=None):
    drafter = random_drafter(target.model, seed=3, draft_vocab=draft_vocab).to(torch.bfloat16)
    return save_drafter(drafter, folder, target.model.fingerprint(), {"note": "test"})


def draft(drafter, target) -> torch.Tensor:
    """Drafter scores for a fixed input: what must survive the round trip bit for bit."""
    torch.manual_seed(0)
    tokens = torch.randint(0, target.model.shape.vocab_size, (7,))
    features = torch.randn(7, target.model.shape.hidden_size)
    cache = drafter.new_cache()
    return drafter.draft_logits(drafter(tokens, features, torch.arange(7), cache))


@pytest.mark.parametrize("draft_vocab", [None, 40])
def test_round_trip_is_bit_identical(target, tmp_path, draft_vocab):
    original = saved_drafter(target, tmp_path / "taps", draft_vocab)
    exported = export_eagle(original, target, tmp_path / "eagle")
    back = import_eagle(exported, target, tmp_path / "back")
    a, b = (load_drafter(p, target.model, dtype=torch.float32) for p in (original, back))
    assert torch.equal(a.d2t, b.d2t)
    assert torch.equal(draft(a, target), draft(b, target))
    assert (
        load_file(str(original / "model.safetensors")).keys()
        == load_file(str(back / "model.safetensors")).keys()
    )


def test_exported_layout_is_eagle(target, tmp_path):
    exported = export_eagle(saved_drafter(target, tmp_path / "taps", 40), target, tmp_path / "eagle")
    config = json.loads((exported / "config.json").read_text())
    target_config = json.loads((target.path / "config.json").read_text())
    assert (
        config["model_type"] == target_config["model_type"]
        and config["architectures"] == target_config["architectures"]
    )
    assert config["num_hidden_layers"] == 1 and config["draft_vocab_size"] == 40
    assert config["hidden_size"] == target.model.shape.hidden_size
    state = load_file(str(exported / "model.safetensors"))
    h = target.model.shape.hidden_size
    assert state["fc.weight"].shape == (h, 2 * h) and not state["fc.bias"].any()
    assert "layers.0.self_attn.q_proj.weight" in state and "layers.0.mlp.down_proj.weight" in state
    assert not any(k.startswith(("embed_tokens", "lm_head", "model.")) for k in state)
    original = load_drafter(tmp_path / "taps", target.model)
    assert torch.equal(torch.arange(40) + state["d2t"], original.d2t)  # EAGLE-3 offset convention
    assert int(state["t2d"].sum()) == 40 and bool(state["t2d"][original.d2t].all())
    # the SGLang token map
    assert torch.equal(torch.load(exported / "hot_token_map.pt", weights_only=True), original.d2t)


def test_imports_a_reference_eagle_checkpoint(target, tmp_path):
    """The original EAGLE code saves pytorch_model.bin with an fc bias and a copy of the target's
    embedding."""
    drafter = random_drafter(target.model, seed=5)
    state = {k: v for k, v in drafter.state_dict().items() if k != "d2t"}
    state["fc.bias"] = torch.randn(target.model.shape.hidden_size)
    state["embed_tokens.weight"] = target.model.model.embed_tokens.weight.clone().half()
    src = tmp_path / "EAGLE-tiny"
    src.mkdir()
    torch.save(state, src / "pytorch_model.bin")
    config = json.loads((target.path / "config.json").read_text()) | {"num_hidden_layers": 1}
    (src / "config.json").write_text(json.dumps(config))
    loaded = load_drafter(import_eagle(src, target, tmp_path / "imported"), target.model, dtype=torch.float32)
    assert loaded.config.fc_bias and torch.equal(loaded.fc.bias, state["fc.bias"])
    assert torch.equal(loaded.d2t, torch.arange(target.model.shape.vocab_size))


def break_folder(folder, how: str, other) -> None:
    weights = folder / "model.safetensors"
    if how == "no config":
        (folder / "config.json").unlink()
    elif how == "bad json":
        (folder / "config.json").write_text("{not json")
    elif how == "truncated":
        weights.write_bytes(weights.read_bytes()[:200])
    elif how == "another target":
        (folder / "config.json").write_text(
            json.dumps(json.loads((other / "config.json").read_text()) | {"hidden_size": 32})
        )
    else:
        state = load_file(str(weights))
        if how == "missing tensor":
            del state["layers.0.mlp.up_proj.weight"]
        elif how == "eagle3":
            state["lm_head.weight"] = torch.zeros(2, 2)
        elif how == "foreign embedding":
            state["embed_tokens.weight"] = torch.randn(96, 64)
        save_file(state, str(weights))


ERRORS = {
    "no config": "no config.json",
    "bad json": "not valid JSON",
    "truncated": "truncated",
    "another target": "hidden_size",
    "missing tensor": "lacks layers.0.mlp.up_proj.weight",
    "eagle3": "EAGLE-3",
    "foreign embedding": "embedding of another model",
}


@pytest.mark.parametrize("how", list(ERRORS))
def test_malformed_folders_are_clear_errors(target, tmp_path, how):
    exported = export_eagle(saved_drafter(target, tmp_path / "taps"), target, tmp_path / "eagle")
    break_folder(exported, how, target.path)
    with pytest.raises(TapsError, match=ERRORS[how]):
        import_eagle(exported, target, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_drafter_of_another_target_is_refused(tiny_dirs, tmp_path):
    llama, qwen = (
        LoadedTarget(f, tiny_dirs[f], TargetModel.from_dir(tiny_dirs[f], dtype=torch.float32), None)
        for f in ("llama", "qwen2")
    )
    exported = export_eagle(saved_drafter(llama, tmp_path / "taps"), llama, tmp_path / "eagle")
    with pytest.raises(TapsError, match="llama"):
        import_eagle(exported, qwen, tmp_path / "out")
    with pytest.raises(TapsError, match="another target"):
        export_eagle(tmp_path / "taps", qwen, tmp_path / "eagle2")
