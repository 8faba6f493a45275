"""Where a training step's time goes: `taps train --profile FILE` runs under torch.profiler and writes
the time of each phase of a step (batch, target features, loss, backward, optimizer) and the costliest
operators.

Why: on the first lent H200, online training ran at 143-154k tokens/s (EAGLE-2) and 92-111k (HASS),
while the target's batched forward alone ran at 671k tokens/s and a bare training step at 2.6M. With
15 minutes of GPU time a session, a profile of a few steps is the cheapest way to find what the
remaining factor is spent on. On a GPU the device time of each phase is what counts (the host only
queues work); on a CPU the two are the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from taps.files import write_text_atomic

PHASES = ("batch", "target features", "loss", "backward", "optimizer")
PREFIX = "taps: "


def phase(name: str):
    """Mark one phase of a training step for the profiler (next to free when none is running)."""
    return record_function(PREFIX + name)


@contextmanager
def profiled(path: str | Path | None, device: torch.device) -> Iterator[None]:
    """Profile what runs inside and write the report to `path` (and print its phase table); no-op for None."""
    if path is None:
        yield
        return
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        yield
    if cuda:
        torch.cuda.synchronize(device)
    phases, ops = report(prof, cuda)
    write_text_atomic(Path(path), phases + "\n\n" + ops + "\n")
    print(phases + f"\n[profile] operators by time: {path}", flush=True)


def report(prof, cuda: bool) -> tuple[str, str]:
    """The per-phase table (markdown) and the profiler's operator table, sorted by self time where it
    is spent (the device on CUDA, else the host)."""
    averages = prof.key_averages()
    rows = ["| phase | calls | host ms | device ms | device ms / call |", "|---|---|---|---|---|"]
    for name in PHASES:
        # on CUDA a range may be listed twice: its host op and its span on the GPU (a user annotation)
        events = [e for e in averages if e.key == PREFIX + name]
        if not events:
            continue
        host = max(events, key=lambda e: e.cpu_time_total)
        device = "– | –"  # on a CPU the host time is the device time
        if cuda:
            device_ms = max(_device_us(e) for e in events) / 1000
            device = f"{device_ms:.1f} | {device_ms / max(host.count, 1):.2f}"
        rows.append(f"| {name} | {host.count} | {host.cpu_time_total / 1000:.1f} | {device} |")
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    return "\n".join(rows), averages.table(sort_by=sort, row_limit=30)


def _device_us(event) -> float:
    """Device time of an event and what it launched (named `cuda_time_total` before torch 2.4)."""
    return float(getattr(event, "device_time_total", getattr(event, "cuda_time_total", 0.0)))
