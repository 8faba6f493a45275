"""A tiny end-to-end run: features -> training (EAGLE-2 and HASS) -> resume -> corrupt inputs."""

import json
import random
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from taps.errors import TapsError
from taps.models.checkpoint import load_drafter
from taps.training.features import extract_features, load_sequences, token_sequences
from taps.training.trainer import TrainConfig, collate, feature_sequences, online_features, train


class CharTokenizer:
    """Chat template stand-in for the tiny random targets: role marker, characters, end marker."""

    chat_template = "char-level"
    eos_token_id = 1

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + (i - 5) % 26) if i >= 5 else "" for i in ids)

    def get_vocab(self):
        return {str(i): i for i in range(96)}

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=True):
        ids = []
        for m in messages:
            ids += [2 if m["role"] == "user" else 3] + [5 + ord(c) % 90 for c in m["content"]] + [1]
        return ids + ([3] if add_generation_prompt else [])


def conversations(n=48, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        word = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6)))
        out.append(
            [
                {"role": "user", "content": f"repeat {word}"},
                {"role": "assistant", "content": " ".join([word] * rng.randint(3, 6))},
            ]
        )
    return out


@pytest.fixture(scope="module")
def features(tiny_dirs, tmp_path_factory):
    from taps.models.target import TargetModel

    model = TargetModel.from_dir(tiny_dirs["llama"], dtype=torch.float32)
    target = SimpleNamespace(model=model, tokenizer=CharTokenizer(), eos_token_ids=(1,), name="tiny")
    out = tmp_path_factory.mktemp("features")
    extract_features(target, conversations(), out, corpus="toy", max_tokens=10**6, shard_tokens=500)
    return target, out


def test_features_are_resumable_and_complete(features, tmp_path):
    target, full = features
    manifest, seqs = load_sequences(full)
    assert manifest["sequences"] == 48 and len(manifest["shards"]) > 1 and manifest["complete"]
    part = tmp_path / "part"
    extract_features(target, conversations(), part, corpus="toy", max_tokens=400, shard_tokens=100)
    chosen = {"seed": 0, "held_out": 4}
    extract_features(
        target, conversations(), part, "toy", 400, shard_tokens=100, command="first", selection=chosen
    )
    with pytest.raises(TapsError, match="--seed 0; rerun with that"):  # another order would mix two samples
        extract_features(target, conversations(), part, "toy", 10**6, selection={**chosen, "seed": 1})
    m2 = extract_features(
        target, conversations(), part, "toy", 10**6, shard_tokens=100, command="larger", selection=chosen
    )
    assert m2["tokens"] == manifest["tokens"] and m2["sequences"] == 48
    assert m2["command"] == "larger"  # the latest run's command reproduces the whole folder
    _, seqs2 = load_sequences(part)
    for a, b in zip(seqs, seqs2):
        assert torch.equal(a.tokens, b.tokens) and torch.allclose(
            a.features.float(), b.features.float(), atol=1e-2
        )
    with pytest.raises(TapsError, match="another target"):
        extract_features(target, conversations(), part, corpus="other", max_tokens=10)


@pytest.mark.parametrize("method", ["eagle2", "hass"])
def test_loss_decreases(features, tmp_path, method):
    target, feats = features
    cfg = TrainConfig(
        method=method,
        epochs=12,
        batch_tokens=400,
        lr=3e-3,
        warmup_steps=5,
        draft_vocab_size=40,
        checkpoint_every=1000,
    )
    out = train(target, feature_sequences(target, [feats]), tmp_path / method, cfg)
    log = __import__("json").loads((tmp_path / f".{method}.train" / "log.json").read_text())
    first = sum(r["loss"] for r in log[:5]) / 5
    last = sum(r["loss"] for r in log[-5:]) / 5
    assert last < 0.85 * first
    assert sum(r["top1"] for r in log[-10:]) > 2 * sum(r["top1"] for r in log[:10])
    drafter = load_drafter(out, target.model, dtype=torch.float32)
    assert drafter.d2t.numel() == 40 and drafter.config.draft_vocab_size == 40
    assert 1 in drafter.d2t.tolist()  # EOS is always in the draft vocabulary


def test_a_warm_start_goes_on_from_the_drafters_weights_and_vocabulary(features, tmp_path):
    import json

    target, feats = features
    seqs = feature_sequences(target, [feats])
    base = TrainConfig(epochs=12, batch_tokens=400, lr=3e-3, warmup_steps=5, draft_vocab_size=40)
    first = train(target, seqs, tmp_path / "first", base)
    trained = json.loads((tmp_path / ".first.train" / "log.json").read_text())
    more = TrainConfig(batch_tokens=400, lr=1e-5, draft_vocab_size=40, max_steps=3, init=str(first), seed=1)
    train(target, seqs, tmp_path / "more", more)
    state = torch.load(tmp_path / ".more.train" / "state.pt", weights_only=False)
    went_on = state["log"]
    # it starts where the first run ended (a fresh drafter starts at the first run's first losses)
    assert went_on[0]["loss"] < 0.8 * trained[0]["loss"]
    assert went_on[0]["loss"] == pytest.approx(sum(r["loss"] for r in trained[-5:]) / 5, rel=0.25)
    assert torch.equal(state["d2t"], load_drafter(first).d2t)
    with pytest.raises(TapsError, match="pass --draft-vocab 40"):
        train(target, seqs, tmp_path / "other", TrainConfig(draft_vocab_size=64, init=str(first)))
    config = json.loads((first / "config.json").read_text())
    config["target"]["embedding_sha256"] = "0" * 16
    (first / "config.json").write_text(json.dumps(config))
    with pytest.raises(TapsError, match="another target"):
        train(target, seqs, tmp_path / "foreign", TrainConfig(draft_vocab_size=40, init=str(first)))


def test_a_short_run_still_reaches_the_peak_learning_rate(features, tmp_path):
    """The default 50-step warm-up is capped at a quarter of a short run, so it ends warm, not mid-ramp."""
    target, feats = features
    cfg = TrainConfig(epochs=2, batch_tokens=400, lr=2e-3, draft_vocab_size=40, checkpoint_every=1000)
    out = train(target, feature_sequences(target, [feats]), tmp_path / "d", cfg)
    log = __import__("json").loads((tmp_path / ".d.train" / "log.json").read_text())
    assert cfg.warmup_steps > len(log) >= 8
    assert max(r["lr"] for r in log) == pytest.approx(cfg.lr)
    assert log[-1]["lr"] < 0.1 * cfg.lr  # and the cosine decay still runs to the end
    assert load_drafter(out).config.draft_vocab_size == 40
    assert (
        __import__("json").loads((out / "config.json").read_text())["card"]["warmup_steps"] == len(log) // 4
    )


def test_resume_gives_the_same_state(features, tmp_path):
    target, feats = features
    cfg = dict(
        method="hass", epochs=3, batch_tokens=400, warmup_steps=2, draft_vocab_size=40, checkpoint_every=2
    )
    straight = train(target, feature_sequences(target, [feats]), tmp_path / "a", TrainConfig(**cfg))
    train(target, feature_sequences(target, [feats]), tmp_path / "b", TrainConfig(**cfg, max_steps=5))
    assert not (tmp_path / "b").exists()
    resumed = train(
        target, feature_sequences(target, [feats]), tmp_path / "b", TrainConfig(**cfg), resume=True
    )
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = __import__("json").loads((resumed / "config.json").read_text())["card"]
    assert card["wall_s"] >= card["wall_s_last_run"] > 0  # the card counts the run before the resume
    assert torch.load(tmp_path / ".b.train" / "state.pt", weights_only=False)["wall_s"] > 0


def test_a_time_limit_cuts_the_schedule_to_the_steps_that_fit(features, tmp_path, monkeypatch):
    """A run fitted to a time limit ends its cosine decay at the fitted step, writes a drafter, and
    resumes to the fitted length, not the planned one."""
    import taps.training.trainer as trainer

    assert trainer.steps_that_fit(60, 6.0, 1.0, 6, 1000) == 60  # 1 s a step: 54 s left = 54 more steps
    assert trainer.steps_that_fit(60, 10.0, 0.5, 6, 1000) == 106  # a slow start does not count
    assert trainer.steps_that_fit(60, 6.0, 1.0, 6, 20) == 20 and trainer.steps_that_fit(1, 6, 1.0, 6, 99) == 7
    target, feats = features
    cfg = dict(epochs=40, batch_tokens=400, warmup_steps=2, draft_vocab_size=40, checkpoint_every=3)
    monkeypatch.setattr(trainer, "steps_that_fit", lambda limit, elapsed, per_step, done, planned: 12)
    seqs = feature_sequences(target, [feats])
    trainer.train(target, seqs, tmp_path / "d", TrainConfig(**cfg, time_limit_s=5.0, max_steps=9))
    out = trainer.train(target, seqs, tmp_path / "d", TrainConfig(**cfg, time_limit_s=5.0), resume=True)
    log = __import__("json").loads((tmp_path / ".d.train" / "log.json").read_text())
    card = __import__("json").loads((out / "config.json").read_text())["card"]
    assert len(log) == card["steps"] == 12 and card["epochs_trained"] < cfg["epochs"]
    assert log[-1]["lr"] < 0.05 * TrainConfig().lr  # the decay ran to the fitted end
    from taps.training.card import write_model_card

    text = write_model_card(out).read_text()  # the card says the epochs trained, not those asked for
    assert f"x {card['epochs_trained']} epochs, 12 steps" in text and "x 40 epochs" not in text


def test_train_checks_its_held_out_corpus_before_training(features, tmp_path, monkeypatch, capsys):
    """The held-out tau at the end needs the corpus: a missing one fails before an hour of training."""
    import taps.cli
    import taps.training.trainer

    target, feats = features
    trained = []
    monkeypatch.setattr(taps.cli, "load_target_from_args", lambda args, **_: target)
    monkeypatch.setattr(taps.training.trainer, "train", lambda *a, **k: trained.append(1))
    out = tmp_path / "drafter"
    assert taps.cli.main(["train", "--features", str(feats), "--out", str(out)]) == 2
    assert "toy" in capsys.readouterr().err  # the corpus named in the features' manifest
    assert not trained and not out.exists()


def test_held_out_tau_uses_the_conversations_the_features_left_out(tmp_path):
    """Features made with --held-out 3 trained on all but 3: the held-out tau must not take 64 (the
    default) and so measure on conversations the drafter was trained on."""
    from taps.data.corpora import load_corpus, split
    from taps.training.heldout import feature_selection, heldout_conversations

    corpus = tmp_path / "mine.jsonl"
    corpus.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations(12)))
    name = f"jsonl:{corpus}"
    manifest = {"corpus": name, "selection": {"seed": 1, "held_out": 3}}
    assert feature_selection(manifest) == (name, 1, 3)
    assert feature_selection({"corpus": name}) == (name, 0, 64)  # folders from before the selection
    trained, left_out = split(load_corpus(name, None, seed=1), 3, seed=1)
    held = heldout_conversations([feature_selection(manifest)], None, prompts=16)
    assert held == left_out and not any(c in trained for c in held)
    assert heldout_conversations([(name, 1, 0)], None) == []  # nothing held out: no held-out tau


def test_corrupt_shard_and_state_are_clear_errors(features, tmp_path):
    import shutil

    target, feats = features
    broken = tmp_path / "broken"
    shutil.copytree(feats, broken)
    shard = broken / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:2000])
    with pytest.raises(TapsError, match="unreadable"):
        load_sequences(broken)
    state = tmp_path / ".d.train"
    state.mkdir()
    (state / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(TapsError, match="unreadable"):
        train(
            target,
            feature_sequences(target, [feats]),
            tmp_path / "d",
            TrainConfig(epochs=1, batch_tokens=400, draft_vocab_size=40),
            resume=True,
        )


def test_regenerate_writes_the_targets_replies_and_resumes(features, tmp_path, tiny_dirs):
    from taps.spec.generate import GenerationConfig, SpeculativeGenerator
    from taps.training.regenerate import regenerate

    target, _ = features
    target = SimpleNamespace(**vars(target), path=tiny_dirs["llama"])
    convs = conversations(6)
    convs[1][0]["content"] = "repeat " + " ".join(["abc"] * 20)  # a long prompt among short ones
    out = tmp_path / "regen.jsonl"
    first = regenerate(target, convs, out, max_new_tokens=8, batch_size=2, limit=4)
    written = [json.loads(line)["index"] for line in out.read_text().splitlines()]
    assert sorted(written) == [0, 1, 2, 3] and written[-1] == 1  # batched by prompt length, longest last
    assert [c[0] for c in first] == [c[0] for c in convs[:4]]  # returned in corpus order
    again = regenerate(target, convs, out, max_new_tokens=8, batch_size=2)
    assert len(out.read_text().splitlines()) == 6 and again[: len(first)] == first
    # the reply is the target's own greedy continuation (batched, left-padded generation agrees with ours)
    ids = target.tokenizer.apply_chat_template([convs[0][0]], add_generation_prompt=True)
    ours = SpeculativeGenerator(target.model).generate(
        ids, GenerationConfig(max_new_tokens=8, eos_token_ids=(1,)), target.tokenizer
    )
    assert again[0][1]["content"] == ours.text.strip()


def test_regenerate_gives_no_reply_to_prompts_too_long_to_train_on(features, tmp_path, tiny_dirs):
    from taps.training.regenerate import regenerate

    target, _ = features
    target = SimpleNamespace(**vars(target), path=tiny_dirs["llama"])
    convs = conversations(4)
    convs[2][0]["content"] = "long " * 40
    out = tmp_path / "regen.jsonl"
    rows = regenerate(target, convs, out, max_new_tokens=4, batch_size=2, max_prompt_tokens=60)
    assert [r[0] for r in rows] == [convs[i][0] for i in (0, 1, 3)]  # the long one dropped
    empty = [json.loads(line) for line in out.read_text().splitlines() if '"content": ""' in line]
    assert [r["index"] for r in empty] == [2]  # recorded, so that a resumed run skips it too
    assert regenerate(target, convs, out, max_new_tokens=4, batch_size=2, max_prompt_tokens=60) == rows


def test_regenerate_resumes_a_file_written_before_rows_had_an_index(features, tmp_path, tiny_dirs):
    from taps.training.regenerate import regenerate

    target, _ = features
    target = SimpleNamespace(**vars(target), path=tiny_dirs["llama"])
    convs = conversations(3)
    old_row = [convs[0][0], {"role": "assistant", "content": "kept from before"}]
    out = tmp_path / "regen.jsonl"
    out.write_text(json.dumps({"messages": old_row}) + "\n")  # corpus order, no index
    rows = regenerate(target, convs, out, max_new_tokens=4, batch_size=2)
    assert rows[0] == old_row and len(out.read_text().splitlines()) == 3


def test_online_features_equal_the_targets_own_forward(features):
    target, _ = features
    seqs = token_sequences(target.tokenizer, conversations(8), max_tokens=10**6)
    tokens, feats, _ = collate(seqs)
    assert feats is None
    online = online_features(target.model, tokens)
    for b, s in enumerate(seqs):  # right padding changes nothing before it
        alone = target.model(s.tokens, target.model.new_cache(len(s.tokens)))
        torch.testing.assert_close(online[b, : len(s.tokens)], alone, atol=1e-5, rtol=1e-5)


def test_online_features_run_the_packed_targets_matmuls_whole(tiny_dirs):
    """Features need no plain step's bits: an exact packed target makes them in one product per
    matmul, not in chunks of its row ceiling (32 rows on an AMX Xeon in bf16)."""
    from taps.models.packed import ONEDNN, RowRange
    from taps.models.target import TargetModel
    from tests.models.test_packed import spy_on_rows

    if not ONEDNN.available:
        pytest.skip("no oneDNN packing in this torch build")
    model = TargetModel.from_dir(tiny_dirs["llama"], dtype=torch.float32).pack_for_cpu()
    tokens = torch.arange(5, 17).reshape(2, 6)
    whole = online_features(model, tokens)
    seen = spy_on_rows(model, RowRange(1, 2))
    assert torch.equal(online_features(model, tokens), whole)
    assert seen and min(seen) == 12  # 2 x 6 rows at once


def test_online_training_learns_without_feature_shards(features, tmp_path):
    import json

    target, _ = features
    seqs = token_sequences(target.tokenizer, conversations(), max_tokens=10**6)
    cfg = TrainConfig(
        epochs=12, batch_tokens=400, lr=3e-3, warmup_steps=5, draft_vocab_size=40, checkpoint_every=1000
    )
    out = train(target, seqs, tmp_path / "online", cfg)
    log = json.loads((tmp_path / ".online.train" / "log.json").read_text())
    assert sum(r["loss"] for r in log[-5:]) < 0.85 * sum(r["loss"] for r in log[:5])
    card = json.loads((out / "config.json").read_text())["card"]
    assert card["features"].startswith("online") and card["processes"] == 1 and card["device"] == "cpu"
    assert not list(tmp_path.glob("**/shard-*"))


def test_mixed_precision_covers_the_losss_head_matmuls(features, tmp_path, monkeypatch):
    """Under bf16 mixed precision the loss's logits (tokens x draft vocabulary, the largest matmuls of a
    step) are computed in bf16 too, not only the drafter's forward; and training still runs."""
    from accelerate.state import AcceleratorState

    import taps.training.trainer as trainer

    target, feats = features
    dtypes = []
    real = trainer.drafter_loss

    def spy(pred, target_feat, draft_logits, target_logits, *rest):
        loss, parts = real(pred, target_feat, draft_logits, target_logits, *rest)
        dtypes.append((draft_logits.dtype, target_logits.dtype, bool(torch.isfinite(loss))))
        return loss, parts

    monkeypatch.setattr(trainer, "drafter_loss", spy)
    cfg = TrainConfig(
        method="hass", batch_tokens=400, draft_vocab_size=40, max_steps=2, mixed_precision="bf16"
    )
    AcceleratorState._reset_state()  # the first Accelerator of a process fixes the precision for all
    try:
        train(target, feature_sequences(target, [feats]), tmp_path / "bf16", cfg)
    finally:
        AcceleratorState._reset_state()
    assert dtypes == [(torch.bfloat16, torch.bfloat16, True)] * 2


def test_a_profiled_run_reports_every_phase_of_its_steps(features, tmp_path, capsys):
    from taps.training.profile import PHASES, profiled

    target, _ = features
    seqs = token_sequences(target.tokenizer, conversations(), max_tokens=10**6)
    cfg = TrainConfig(batch_tokens=400, draft_vocab_size=40, max_steps=3, checkpoint_every=1000)
    with profiled(tmp_path / "profile.md", target.model.device):
        train(target, seqs, tmp_path / "d", cfg)
    text = (tmp_path / "profile.md").read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in text.splitlines()[2:7]}
    assert rows == {name: "3" for name in PHASES}  # each phase once a step, online: target features too
    assert "aten::" in text and "| target features | 3 |" in capsys.readouterr().out


def test_train_needs_exactly_one_data_source(capsys):
    from taps.cli import main

    assert main(["train", "--out", "x"]) == 2
    assert main(["train", "--out", "x", "--online"]) == 2
    assert "--online --corpus" in capsys.readouterr().err


def test_conversations_encode_alike_in_a_pool_and_cut_early():
    """Multi-turn threads, encoded serially and by a process pool, cut inside a later turn: ids and
    masks equal the whole thread's rendering cut to the length (what the early stop must keep)."""
    from taps.data.chat import encode_conversation, encode_conversations

    tok, rng = CharTokenizer(), random.Random(1)
    threads = [
        [{"role": r, "content": "ab" * rng.randint(1, 9)} for _ in range(4) for r in ("user", "assistant")]
        for _ in range(40)
    ]
    for cut in (12, 40, 10**4):
        whole = []
        for t in threads:
            ids = tok.apply_chat_template(t)
            mask, pos = [0] * len(ids), 0
            for m in t:
                n = len(m["content"]) + 2
                mask[pos + 1 : pos + n] = [int(m["role"] == "assistant")] * (n - 1)
                pos += n
            whole.append((ids[:cut], mask[:cut]))
        assert [encode_conversation(tok, t, cut) for t in threads] == whole
        assert list(encode_conversations(tok, threads, cut, workers=2, chunk=3)) == whole
