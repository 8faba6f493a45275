"""Small settings objects and the few environment variables taps reads (no global state)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def taps_home() -> Path:
    """Where taps caches converted models, data downloads and features (`TAPS_HOME`)."""
    return Path(os.environ.get("TAPS_HOME", Path.home() / ".cache" / "taps")).expanduser()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def fast_dtype():
    """bfloat16 where the hardware computes in it natively (CUDA, or a CPU with avx512_bf16 / AMX),
    else float32: on an AVX2-only CPU bf16 matmuls are emulated and a 32-token tree verification costs
    about 5x its float32 time, which would erase any speculative speed-up."""
    import torch

    if torch.cuda.is_available() or cpu_flags() & {"avx512_bf16", "amx_bf16"}:
        return torch.bfloat16
    return torch.float32


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
    native = "native bf16" if cpu_flags() & {"avx512_bf16", "amx_bf16"} else "no native bf16"
    return f"{model}, {os.cpu_count()} cores, {native}"
