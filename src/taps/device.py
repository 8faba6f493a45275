"""Which device runs the models, in which dtype, and how to name the machine in a measurement.

Every command that runs a model takes `--device auto|cpu|cuda|cuda:N`; `auto` is the first CUDA
device when torch sees one, else the CPU. The dtype follows the hardware: bf16 where it is computed
natively (CUDA, or a CPU with avx512_bf16 / AMX), float32 elsewhere, because on an AVX2-only CPU
bf16 matmuls are emulated and a 32-token tree verification costs about 5x its float32 time.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from taps.errors import TapsError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """`auto` / None -> cuda:0 when available, else cpu; anything else is checked to exist."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise TapsError(f"unknown device {spec!r}: use {DEVICE_CHOICES}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise TapsError(f"device {spec!r} is not supported: use {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise TapsError(f"--device {spec}: {why}; use --device cpu (or auto)")
    index = 0 if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise TapsError(
            f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible; use cuda:0.."
        )
    return torch.device("cuda", index)


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: torch.device) -> bool:
    return device.type == "cuda" or bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def fast_dtype(device: torch.device | None = None) -> torch.dtype:
    """bfloat16 where `device` computes it natively, else float32 (see the module docstring)."""
    return torch.bfloat16 if native_bf16(device or resolve_device("auto")) else torch.float32


def machine_description(device: torch.device | None = None) -> str:
    """The GPU, or the CPU model, core count and bf16 support: what a measurement names."""
    if device is not None and device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    fields = _cpuinfo_fields()
    model = fields.get("model name", platform.machine())
    if "cpu family" in fields:  # a virtual machine's name ('AMD EPYC') hides the generation; these do not
        model += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    native = "native bf16" if native_bf16(torch.device("cpu")) else "no native bf16"
    return f"{model}, {os.cpu_count()} cores, {native}"


def _cpuinfo_fields() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
