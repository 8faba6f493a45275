"""Small settings objects and the few environment variables taps reads (no global state)."""

from __future__ import annotations

import os
from pathlib import Path


def taps_home() -> Path:
    """Where taps caches converted models, data downloads and features (`TAPS_HOME`)."""
    return Path(os.environ.get("TAPS_HOME", Path.home() / ".cache" / "taps")).expanduser()
