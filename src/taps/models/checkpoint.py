"""Save and load drafters: `model.safetensors` + `config.json` recording the target they belong to.

A drafter only makes sense on the target whose embedding, LM head and features it was trained on,
so the config carries the target's fingerprint and loading checks it. Writes go to a temporary
folder that is renamed into place, so an interrupted save never leaves half a checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from taps.errors import TapsError
from taps.files import atomic_dir
from taps.models.drafter import Drafter, DrafterConfig

FORMAT = "taps-drafter/1"


def save_drafter(
    drafter: Drafter, path: str | Path, target_fingerprint: dict, card: dict | None = None
) -> Path:
    """Write the drafter's own weights (never the borrowed embedding/head) atomically."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in drafter.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        config = {
            "format": FORMAT,
            "drafter": drafter.config.to_dict(),
            "target": target_fingerprint,
            "card": card or {},
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
    return path


def read_config(path: str | Path) -> dict:
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise TapsError(
            f"{path} is not a taps drafter (no config.json); train one with `taps train` or import one with "
            "`taps import`"
        )
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise TapsError(
            f"{cfg_file} is not valid JSON ({exc}); the drafter is corrupt, re-create it"
        ) from exc
    if config.get("format") != FORMAT:
        raise TapsError(
            f"{path} is not a {FORMAT} drafter (format {config.get('format')!r}); use `taps import` for "
            "EAGLE checkpoints"
        )
    return config


def load_drafter(path: str | Path, target=None, dtype: torch.dtype = torch.bfloat16) -> Drafter:
    """Load a drafter; with `target`, check it belongs to that target, move it to the target's device
    and attach its embedding/head."""
    path = Path(path)
    config = read_config(path)
    if target is not None:
        check_fingerprint(config["target"], target.fingerprint(), path)
    drafter = Drafter(DrafterConfig.from_dict(config["drafter"]))
    try:
        state = load_file(str(path / "model.safetensors"))
    except (SafetensorError, FileNotFoundError, OSError) as exc:
        raise TapsError(
            f"cannot read {path / 'model.safetensors'} ({exc}); the drafter is missing or truncated, "
            "re-create it"
        ) from exc
    expected = drafter.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise TapsError(
            f"{path}: drafter weights lack {missing[0]} (and {len(missing) - 1} more); the checkpoint is "
            "incomplete"
        )
    bad = [k for k in expected if state[k].shape != expected[k].shape]
    if bad:
        raise TapsError(
            f"{path}: {bad[0]} has shape {tuple(state[bad[0]].shape)}, config says "
            f"{tuple(expected[bad[0]].shape)}"
        )
    drafter.load_state_dict(state, strict=False)
    drafter.d2t = state["d2t"].long()
    drafter.to(target.device if target is not None else "cpu", dtype)
    drafter.requires_grad_(False).eval()
    if target is not None:
        drafter.attach(target)
    return drafter


def check_fingerprint(expected: dict, actual: dict, path: Path) -> None:
    diffs = [k for k in expected if expected.get(k) != actual.get(k)]
    if diffs:
        k = diffs[0]
        raise TapsError(
            f"drafter {path} was trained for another target ({k}: {expected[k]!r} != {actual.get(k)!r}); "
            "use a drafter trained for this target or pass the matching --target"
        )
