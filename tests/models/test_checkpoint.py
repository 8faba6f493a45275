import json

import pytest
import torch

from taps.errors import TapsError
from taps.models.checkpoint import load_drafter, save_drafter
from taps.models.drafter import Drafter, DrafterConfig
from taps.models.target import TargetModel
from tests.conftest import random_drafter


def test_round_trip_gives_identical_outputs(tiny_target, tmp_path):
    drafter = random_drafter(tiny_target, seed=0, draft_vocab=30)
    save_drafter(drafter, tmp_path / "d", tiny_target.fingerprint(), card={"note": "test"})
    loaded = load_drafter(tmp_path / "d", tiny_target, dtype=torch.float32)
    tok, feat, pos = torch.tensor([3, 4, 5]), torch.randn(3, 64), torch.arange(3)
    torch.testing.assert_close(
        loaded(tok, feat, pos, loaded.new_cache()),
        drafter(tok, feat, pos, drafter.new_cache()),
        rtol=0,
        atol=0,
    )
    assert loaded.d2t.tolist() == drafter.d2t.tolist()
    assert set(loaded.state_dict()) == {k for k in drafter.state_dict()} and not any(
        "embed" in k for k in drafter.state_dict()
    )
    assert not list((tmp_path).glob(".d-*"))  # no temp folder left behind


def test_wrong_target_truncated_and_missing(tiny_dirs, tmp_path):
    llama = TargetModel.from_dir(tiny_dirs["llama"], dtype=torch.float32)
    qwen = TargetModel.from_dir(tiny_dirs["qwen2"], dtype=torch.float32)
    save_drafter(random_drafter(llama), tmp_path / "d", llama.fingerprint())
    with pytest.raises(TapsError, match="another target"):
        load_drafter(tmp_path / "d", qwen)
    weights = tmp_path / "d" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(TapsError, match="truncated"):
        load_drafter(tmp_path / "d", llama)
    with pytest.raises(TapsError, match="no config.json"):
        load_drafter(tmp_path / "nowhere", llama)
    cfg = tmp_path / "d" / "config.json"
    cfg.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(TapsError, match="format"):
        load_drafter(tmp_path / "d", llama)


def test_average_is_the_mean_and_rejects_mismatches(tiny_dirs, tmp_path):
    from taps.models.average import average_drafters

    llama = TargetModel.from_dir(tiny_dirs["llama"], dtype=torch.float32)
    a, b = random_drafter(llama, seed=1, draft_vocab=30), random_drafter(llama, seed=2, draft_vocab=30)
    b.d2t = a.d2t.clone()
    save_drafter(a, tmp_path / "a", llama.fingerprint())
    save_drafter(b, tmp_path / "b", llama.fingerprint())
    avg, _ = average_drafters([tmp_path / "a", tmp_path / "b"], [1.0, 3.0])
    torch.testing.assert_close(avg.fc.weight, 0.25 * a.fc.weight + 0.75 * b.fc.weight)
    # a config.json written before `fc_bias` existed (as four shipped drafters' are) has the same shape
    old = json.loads((tmp_path / "b" / "config.json").read_text())
    del old["drafter"]["fc_bias"]
    (tmp_path / "b" / "config.json").write_text(json.dumps(old))
    average_drafters([tmp_path / "a", tmp_path / "b"])
    # another reduced vocabulary: the average drafts over the union
    c = random_drafter(llama, seed=3, draft_vocab=20)
    save_drafter(c, tmp_path / "c", llama.fingerprint())
    mixed, _ = average_drafters([tmp_path / "a", tmp_path / "c"])
    union = torch.unique(torch.cat([a.d2t, c.d2t]))
    assert torch.equal(mixed.d2t, union) and mixed.config.draft_vocab_size == len(union)
    torch.testing.assert_close(
        mixed.layers[0].mlp.up_proj.weight,
        0.5 * (a.layers[0].mlp.up_proj.weight + c.layers[0].mlp.up_proj.weight),
    )
    full, _ = average_drafters(
        [tmp_path / "a", save_drafter(random_drafter(llama, seed=4), tmp_path / "f", llama.fingerprint())]
    )
    assert full.config.draft_vocab_size is None and len(full.d2t) == llama.shape.vocab_size
    deep = Drafter(DrafterConfig(shape=llama.shape, num_layers=2))
    save_drafter(deep, tmp_path / "d", llama.fingerprint())
    with pytest.raises(TapsError, match="cannot be averaged"):
        average_drafters([tmp_path / "a", tmp_path / "d"])
    qwen = TargetModel.from_dir(tiny_dirs["qwen2"], dtype=torch.float32)
    save_drafter(random_drafter(qwen, seed=1, draft_vocab=30), tmp_path / "q", qwen.fingerprint())
    with pytest.raises(TapsError, match="another target"):
        average_drafters([tmp_path / "a", tmp_path / "q"])


def test_a_widened_drafter_scores_its_old_vocabulary_as_before_and_every_other_token(tiny_target):
    """The head is the target's own, so widening changes no score the drafter had, only adds the rest;
    by default taps widens drafters on a GPU, not on a CPU (`--vocabulary` chooses)."""
    from types import SimpleNamespace

    from taps.drafters import scoring

    drafter = random_drafter(tiny_target, seed=4, draft_vocab=40)
    old_d2t, hidden = drafter.d2t.clone(), torch.randn(3, tiny_target.shape.hidden_size)
    before = drafter.draft_logits(hidden)
    assert scoring(drafter, SimpleNamespace(model=tiny_target)).d2t.shape == (40,)  # a CPU
    gpu = SimpleNamespace(model=SimpleNamespace(device=torch.device("cuda"), lm_head=tiny_target.lm_head))
    assert scoring(drafter, gpu, "trained").d2t.shape == (40,)  # asked for: kept on a GPU too
    wide = scoring(drafter, gpu)
    after = wide.draft_logits(hidden)
    assert after.shape == (3, tiny_target.shape.vocab_size) and wide.config.draft_vocab_size is None
    assert torch.equal(wide.d2t, torch.arange(tiny_target.shape.vocab_size))
    torch.testing.assert_close(after[:, old_d2t], before)
    torch.testing.assert_close(after, hidden @ tiny_target.lm_head.weight.float().mT)


def test_whole_vocabulary_on_a_cpu_is_asked_for_through_the_tree_shape(tiny_target, tmp_path):
    from types import SimpleNamespace

    from taps.drafters import make_proposer
    from taps.spec.propose import TreeShape

    save_drafter(
        random_drafter(tiny_target, seed=4, draft_vocab=40), tmp_path / "d", tiny_target.fingerprint()
    )
    target = SimpleNamespace(model=tiny_target, name="tiny")
    assert make_proposer(str(tmp_path / "d"), target, TreeShape()).drafter.d2t.shape == (40,)
    whole = make_proposer(str(tmp_path / "d"), target, TreeShape(vocabulary="whole")).drafter
    assert whole.d2t.shape == (tiny_target.shape.vocab_size,)
    with pytest.raises(ValueError, match="vocabulary"):
        TreeShape(vocabulary="all")
