"""The drafters shipped in the package: every one loads, is bf16, fits the size cap, and belongs to its
target folder (all drafters of one target carry the same target fingerprint). Cheap, and needs no
target weights, so it also guards the drafters of targets CI does not install."""

import pytest
from safetensors import safe_open

from taps.drafters import SHIPPED_ROOT, shipped_drafters
from taps.models.catalog import DEFAULT_TARGET, TARGETS
from taps.models.checkpoint import load_drafter, read_config

MB = 1024 * 1024
CAP_MB = {DEFAULT_TARGET: 15}  # product limits: 15 MB for the default target's drafters, 40 MB otherwise
SHIPPED = [
    (t.name, d) for t in sorted(SHIPPED_ROOT.iterdir()) if t.is_dir() for d in shipped_drafters(t.name)
]


def test_shipped_drafters_fit_the_repository_budget():
    """Every transfer to a lent GPU machine carries the tree (64 MiB at most, parts included), and a
    drafter is shipped only where it beats the n-gram proposer (the 50k-token qwen ones did not)."""
    total = sum(f.stat().st_size for f in SHIPPED_ROOT.rglob("*") if f.is_file())
    assert total <= 55 * MB
    assert {t.name for t in SHIPPED_ROOT.iterdir() if t.is_dir()} == {DEFAULT_TARGET}


def test_the_default_target_ships_the_six_paper_drafters():
    expected = {f"{m}-{c}" for m in ("eagle2", "hass") for c in ("math", "chat", "mixed")}
    assert expected <= set(shipped_drafters(DEFAULT_TARGET))


@pytest.mark.parametrize("target,name", SHIPPED, ids=[f"{t}/{d}" for t, d in SHIPPED])
def test_shipped_drafter_is_consistent(target, name):
    assert target in TARGETS, f"drafters shipped for unknown target {target}"
    folder = SHIPPED_ROOT / target / name
    config = read_config(folder)
    assert config["card"]["target"] == target
    assert name.startswith(config["card"]["method"])
    siblings = {
        read_config(SHIPPED_ROOT / target / d)["target"]["embedding_sha256"] for d in shipped_drafters(target)
    }
    assert siblings == {config["target"]["embedding_sha256"]}
    weights = folder / "model.safetensors"
    assert weights.stat().st_size <= CAP_MB.get(target, 40) * MB
    with safe_open(str(weights), "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} <= {"BF16", "I64", "I32"}
    load_drafter(folder)  # shapes and tensors match the config
    assert (folder / "README.md").is_file(), "every shipped drafter has a model card"
