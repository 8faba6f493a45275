"""Run the target once over a corpus and cache what drafter training needs, in shards.

Each sequence stores its token ids, a loss mask (assistant tokens) and the target's last hidden
states (bf16, after the final norm). The target's logits are not stored: they are `head(feature)`,
recomputed exactly during training over the draft vocabulary, which costs far less than the
disk a top-K table would. Shards are written atomically with a manifest, so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from taps.data.chat import encode_conversation, encode_conversations
from taps.errors import TapsError
from taps.files import write_json_atomic

MANIFEST = "manifest.json"


@dataclass
class Sequence:
    tokens: torch.Tensor  # [n] long
    features: torch.Tensor | None  # [n, H] bf16; None when training online (the target makes them)
    loss_mask: torch.Tensor  # [n] bool


def token_sequences(tokenizer, conversations: list, max_tokens: int, max_len: int = 1024) -> list[Sequence]:
    """Conversations as token sequences without features (for online training), up to `max_tokens`;
    like `extract_features`, sequences with fewer than two assistant tokens are skipped."""
    seqs, total = [], 0
    for ids, mask in encode_conversations(tokenizer, conversations, max_len):
        if total >= max_tokens:
            break
        if sum(mask) >= 2:
            seqs.append(Sequence(torch.tensor(ids), None, torch.tensor(mask, dtype=torch.bool)))
            total += len(ids)
    return seqs


def extract_features(
    target,
    conversations: list,
    out_dir: str | Path,
    corpus: str,
    max_tokens: int,
    max_len: int = 1024,
    shard_tokens: int = 1 << 18,
    command: str | None = None,
    selection: dict | None = None,
) -> dict:
    """Write feature shards for `conversations` until `max_tokens` tokens; resumes a partial run, or
    extends a finished one to a larger budget. `selection` (seed, held-out count) must match what the
    folder was started with: a resumed run continues the same conversation order, so the command of
    the latest run reproduces the whole folder, and that is the command recorded."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = _load_or_start(out_dir, target, corpus, max_len, selection or {})
    manifest["command"] = command or manifest.get("command")
    done, total = manifest["conversations_done"], manifest["tokens"]
    buffer: list[Sequence] = []
    bar = tqdm(
        total=max_tokens,
        initial=total,
        unit="tok",
        desc=f"features[{corpus}]",
        dynamic_ncols=True,
        mininterval=20,
    )
    start = time.perf_counter()
    for conv in conversations[done:]:
        if total >= max_tokens:
            break
        ids, mask = encode_conversation(target.tokenizer, conv, max_len)
        done += 1
        if sum(mask) < 2:
            continue
        hidden = target.model(torch.tensor(ids, device=target.model.device), target.model.new_cache(len(ids)))
        buffer.append(
            Sequence(torch.tensor(ids), hidden.to(torch.bfloat16).cpu(), torch.tensor(mask, dtype=torch.bool))
        )
        total += len(ids)
        bar.update(len(ids))
        if sum(len(s.tokens) for s in buffer) >= shard_tokens:
            _write_shard(out_dir, manifest, buffer, done)
            buffer = []
    if buffer or done > manifest["conversations_done"]:
        _write_shard(out_dir, manifest, buffer, done)
    bar.close()
    manifest["complete"] = total >= max_tokens or done >= len(conversations)
    _write_manifest(out_dir, manifest)
    elapsed = time.perf_counter() - start
    print(
        f"[features] {corpus}: {manifest['tokens']} tokens in {manifest['sequences']} sequences, "
        f"{len(manifest['shards'])} shards ({elapsed:.0f} s this run)",
        flush=True,
    )
    return manifest


def _load_or_start(out_dir: Path, target, corpus: str, max_len: int, selection: dict) -> dict:
    path = out_dir / MANIFEST
    fingerprint = target.model.fingerprint()
    if path.is_file():
        manifest = read_manifest(out_dir)
        if (
            manifest["target"] != fingerprint
            or manifest["corpus"] != corpus
            or manifest["max_len"] != max_len
        ):
            raise TapsError(
                f"{out_dir} holds features of another target/corpus/max_len; pick a new --out folder"
            )
        recorded = manifest.get("selection", {})  # folders from before it was recorded: taken as given
        was = [
            f"--{k.replace('_', '-')} {recorded[k]}" for k, v in selection.items() if recorded.get(k, v) != v
        ]
        if was:
            raise TapsError(
                f"{out_dir} holds conversations chosen with {', '.join(was)}; rerun with that or pick a new "
                "--out folder"
            )
        manifest["selection"] = {**recorded, **selection}
        return manifest
    return {
        "selection": selection,
        "format": "taps-features/1",
        "target": fingerprint,
        "corpus": corpus,
        "max_len": max_len,
        "hidden_size": target.model.shape.hidden_size,
        "shards": [],
        "sequences": 0,
        "tokens": 0,
        "conversations_done": 0,
        "complete": False,
    }


def _write_shard(out_dir: Path, manifest: dict, seqs: list[Sequence], done: int) -> None:
    if seqs:
        name = f"shard-{len(manifest['shards']):05d}.safetensors"
        lengths = torch.tensor([len(s.tokens) for s in seqs])
        tensors = {
            "tokens": torch.cat([s.tokens for s in seqs]).to(torch.int32),
            "features": torch.cat([s.features for s in seqs]),
            "loss_mask": torch.cat([s.loss_mask for s in seqs]).to(torch.uint8),
            "offsets": torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
        }
        tmp = out_dir / f".{name}.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, out_dir / name)
        manifest["shards"].append({"file": name, "sequences": len(seqs), "tokens": int(lengths.sum())})
        manifest["sequences"] += len(seqs)
        manifest["tokens"] += int(lengths.sum())
    manifest["conversations_done"] = done
    _write_manifest(out_dir, manifest)


def _write_manifest(out_dir: Path, manifest: dict) -> None:
    write_json_atomic(out_dir / MANIFEST, manifest)


def read_manifest(out_dir: str | Path) -> dict:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise TapsError(f"{out_dir} has no {MANIFEST}; create features first with `taps features`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TapsError(f"{path} is corrupt ({exc}); delete the folder and rerun `taps features`") from exc


def load_sequences(feature_dir: str | Path) -> tuple[dict, list[Sequence]]:
    """All sequences of a feature folder, checked shard by shard."""
    manifest = read_manifest(feature_dir)
    seqs: list[Sequence] = []
    for shard in manifest["shards"]:
        path = Path(feature_dir) / shard["file"]
        try:
            t = load_file(str(path))
            offsets = t["offsets"].tolist()
            ok = (
                len(offsets) == shard["sequences"] + 1
                and offsets[-1] == t["tokens"].shape[0] == t["features"].shape[0]
            )
        except (SafetensorError, FileNotFoundError, OSError, KeyError) as exc:
            raise TapsError(
                f"feature shard {path} is unreadable ({exc}); delete the folder and rerun `taps features`"
            ) from exc
        if not ok:
            raise TapsError(
                f"feature shard {path} does not match the manifest; delete the folder and rerun `taps "
                "features`"
            )
        for a, b in zip(offsets[:-1], offsets[1:]):
            seqs.append(Sequence(t["tokens"][a:b].long(), t["features"][a:b], t["loss_mask"][a:b].bool()))
    return manifest, seqs
