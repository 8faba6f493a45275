"""Parsers for the command line's numeric values: each refuses a bad value where argparse reads it,
with one line that names the option and what it takes, before any model loads or any file is made.

Without them a `--top-k 0` silently fell back to the default, a `--top-k -3` or `--port 99999` ended
in a traceback, `--tokens 0` wrote an empty feature folder, and a bad temperature in `taps eval`'s
list surfaced only after the cells before it had run.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable


def _number(value: str, kind: type) -> int | float:
    try:
        number = kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'a whole number' if kind is int else 'a number'}, got {value!r}"
        ) from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return number


def count(minimum: int) -> Callable[[str], int]:
    """A whole number >= `minimum` (token budgets, tree sizes, steps: 0 or less means nothing)."""

    def parse(value: str) -> int:
        number = _number(value, int)
        if number < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {number}")
        return number

    return parse


def positive(value: str) -> float:
    """A finite number > 0 (epochs, learning rate, seconds)."""
    number = _number(value, float)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}")
    return number


def temperature(value: str) -> float:
    """A sampling temperature: finite, >= 0 (0 = greedy)."""
    number = _number(value, float)
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a temperature >= 0 (0 = greedy), got {value!r}")
    return number


def temperatures(value: str) -> list[float]:
    """A comma-separated list of temperatures, each checked (a grid runs them in turn: a bad one must
    not wait for the cells before it)."""
    items = [item.strip() for item in value.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"expected comma-separated temperatures, e.g. 0,1, got {value!r}")
    return [temperature(item) for item in items]


def probability(value: str) -> float:
    """top-p: in (0, 1]."""
    number = _number(value, float)
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {value!r}")
    return number


def numbers(value: str) -> list[float]:
    """Comma-separated finite numbers (`taps average --weights`; their range is the command's to check)."""
    return [_number(item.strip(), float) for item in value.split(",")]


def port(value: str) -> int:
    """A TCP port: 0-65535 (0: any free port)."""
    number = _number(value, int)
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0-65535, got {number}")
    return number


def folder(value: str) -> str:
    """An output folder: a path that is not an existing file (a folder there is reused or resumed)."""
    if os.path.exists(value) and not os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"{value} is a file, not a folder; pass another path")
    return value


def threads(value: str) -> int:
    """--threads: a positive count, or auto: torch's own default, the physical cores (on a 2-core Zen 4
    EPYC plain decoding ran 1.27x as fast on 2 threads as on 1 in bf16, 1.42x run as AVX2 in float32,
    side by side, and every drafter row 1.28-1.51x ahead of it: docs/speed-cpu.md, "Two threads")."""
    if value == "auto":
        import torch

        return torch.get_num_threads()
    number = int(value) if value.isdigit() else 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive count or auto, got {value!r}")
    return number
