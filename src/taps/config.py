"""Small settings objects and the few environment variables taps reads (no global state)."""

from __future__ import annotations

import os
from pathlib import Path

# `--attention`: the dtype a bf16 target attends in (`taps.models.padded.attention_dtype`). Here, not
# there, so that building the command line imports no torch (`taps --help` in a fifth of the time).
ATTENTION_CHOICES = ("auto", "model", "float32", "float64")


def taps_home() -> Path:
    """Where taps caches converted models, data downloads and features (`TAPS_HOME`)."""
    return Path(os.environ.get("TAPS_HOME", Path.home() / ".cache" / "taps")).expanduser()
