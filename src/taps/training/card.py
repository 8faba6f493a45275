"""A drafter's model card (README.md beside its weights), written from what training recorded."""

from __future__ import annotations

from pathlib import Path

from taps.files import write_text_atomic
from taps.models.checkpoint import read_config


def write_model_card(drafter_dir: str | Path, features_command: str | None = None) -> Path:
    drafter_dir = Path(drafter_dir)
    config = read_config(drafter_dir)
    card, shape = config["card"], config["drafter"]
    cfg = card.get("config", {})
    losses = card.get("final_losses_last50", {})
    held = card.get("heldout_tau", {})
    size = (drafter_dir / "model.safetensors").stat().st_size / 1e6
    lines = [
        f"# {drafter_dir.name}",
        "",
        f"{card.get('method', '?').upper()} drafter for target `{card.get('target', '?')}` "
        f"(fingerprint `{config['target'].get('embedding_sha256')}`), trained on: "
        f"{', '.join(card.get('corpora', []))}.",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | fc(2H->H) + {shape['num_layers']} {shape['shape']['family']} decoder layer, "
        "target's embedding and LM head borrowed |",
        f"| draft vocabulary | {shape['draft_vocab_size'] or shape['shape']['vocab_size']} tokens (most "
        "frequent in the training replies) |",
        f"| weights | {size:.1f} MB, bf16 safetensors |",
        f"| training tokens | {card.get('train_tokens')} (x {_epochs(card)} epochs, {card.get('steps')} "
        f"steps of <= {cfg.get('batch_tokens')} tokens) |",
        *_warm_start(card.get("init")),
        f"| objective | {_objective(cfg)} |",
        f"| optimiser | AdamW lr {cfg.get('lr')}, warm-up "
        f"{card.get('warmup_steps', cfg.get('warmup_steps'))} steps + cosine decay, "
        f"clip {cfg.get('grad_clip')}, "
        f"{_precision(card.get('mixed_precision', cfg.get('mixed_precision')))} |",
        f"| hardware | {card.get('hardware')}; {_wall(card)} |",
        f"| final losses (mean of last {min(50, card.get('steps') or 50)} steps) | "
        + ", ".join(f"{k} {v:.3f}" for k, v in losses.items())
        + " |",
        f"| held-out tau | {held.get('tau')} on {held.get('prompts')} held-out prompts of its corpora, T = "
        f"{held.get('temperature')}, "
        f"{held.get('max_new_tokens')} new tokens, default tree |"
        if held
        else "| held-out tau | not measured: no conversations were held out (`--held-out 0`) |",
        "",
        "Reproduce:",
        "",
        "```bash",
    ]
    if features_command:
        lines.append(features_command)
    lines += [card.get("command", ""), "```", ""]
    out = drafter_dir / "README.md"
    write_text_atomic(out, "\n".join(lines))
    return out


def _epochs(card: dict) -> float | None:
    """Epochs trained: `--time-limit` cuts the schedule short of the epochs asked for (a card of an
    H200 run said x 3.0 for 1.21 trained), so the asked-for count only stands in for older cards."""
    return card.get("epochs_trained", card.get("config", {}).get("epochs"))


def _went_on_from(card: dict) -> str:
    """'NAME + ' for a drafter trained on from another (`--init`): its tokens come on top."""
    init = card.get("init")
    return f"{str(init.get('drafter')).split()[0]} + " if init else ""


def _warm_start(init: dict | None) -> list[str]:
    """The row saying what training went on from (`taps train --init`), if anything."""
    if not init:
        return []
    return [
        f"| went on from | {init.get('drafter')}: {init.get('train_tokens')} tokens x "
        f"{init.get('epochs')} epochs, {init.get('device')} (the tokens above come on top) |"
    ]


def _precision(setting: str | None) -> str:
    return {"no": "float32 (no autocast)", None: "?"}.get(setting, f"{setting} autocast")


def _objective(cfg: dict) -> str:
    base = "smooth-L1 feature regression (w 1.0) + soft cross-entropy vs the target (w 0.1)"
    if cfg.get("method") == "hass":
        return (
            f"{base} + HASS top-{cfg.get('topk')} distillation (w {cfg.get('topk_weight')}), "
            f"{cfg.get('align_steps')} context-alignment steps"
        )
    return base


def write_index(folder: str | Path, preamble: str = "") -> Path:
    """README.md of a folder of drafters: one row per drafter from its recorded card."""
    folder = Path(folder)
    lines = [
        f"# Drafters for `{folder.name}`",
        "",
        preamble,
        "",
        "| drafter | method | corpus | training tokens x epochs | steps | draft vocab | MB | final top-1 "
        "(train) | held-out tau |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in sorted(p for p in folder.iterdir() if (p / "config.json").is_file()):
        c = read_config(d)
        card, held = c["card"], c["card"].get("heldout_tau", {})
        top1 = card.get("final_losses_last50", {}).get("top1")
        lines.append(
            f"| [{d.name}]({d.name}/README.md) | {card.get('method')} | {', '.join(card.get('corpora', []))} "
            "| "
            f"{_went_on_from(card)}{card.get('train_tokens')} x {_epochs(card)} | {card.get('steps')} | "
            f"{c['drafter']['draft_vocab_size']} | {(d / 'model.safetensors').stat().st_size / 1e6:.1f} | "
            f"{top1:.3f} | {held.get('tau')} |"
        )
    out = folder / "README.md"
    write_text_atomic(out, "\n".join(lines) + "\n")
    return out


def _wall(card: dict) -> str:
    """Training wall time; cards written before resumes were counted give the final run's only."""
    if card.get("wall_s") is not None:
        return f"training wall time {card['wall_s']} s (resumes included)"
    return f"wall time of the final run {card.get('wall_s_last_run')} s"
