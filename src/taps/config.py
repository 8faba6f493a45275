"""Small settings objects and the few environment variables taps reads (no global state)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def taps_home() -> Path:
    """Where taps caches converted models, data downloads and features (`TAPS_HOME`)."""
    return Path(os.environ.get("TAPS_HOME", Path.home() / ".cache" / "taps")).expanduser()


def machine_description() -> str:
    """CPU model and core count, for the records that say where a figure was measured."""
    model = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"
