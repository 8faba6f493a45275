"""File helpers shared across taps: atomic writes, and data files inside installed packages."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from taps.errors import TapsError


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path` that replaces `path` only if the block succeeds,
    so an interrupted write never leaves half a model, drafter or checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield tmp
        _default_permissions(tmp)
        if path.exists():
            shutil.rmtree(path)
        tmp.replace(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _default_permissions(root: Path) -> None:
    """mkdtemp (and safetensors) create owner-only entries; give the result the modes of a normal
    write, so another user or engine (a vLLM server reading an export) can read it."""
    mask = os.umask(0)
    os.umask(mask)
    for p in [root, *root.rglob("*")]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent))


def measurement_path(folder: Path, key: dict) -> Path:
    """Where a measurement made once per machine is kept: `folder`, named by a digest of its key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return folder / f"{digest}.json"


def read_measurement(folder: Path, key: dict, max_age_s: float | None = None) -> dict | None:
    """What `write_measurement` kept for exactly this key (everything the measurement depends on), or
    None where there is none, it is older than `max_age_s`, or the file is unreadable."""
    try:
        saved = json.loads(measurement_path(folder, key).read_text())
        if saved["key"] == key and (max_age_s is None or time.time() - saved["measured_at"] < max_age_s):
            return saved
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing, stale or corrupt: measure again
    return None


def write_measurement(folder: Path, key: dict, values: dict) -> None:
    write_json_atomic(measurement_path(folder, key), {"key": key, "measured_at": time.time(), **values})


def package_file(import_name: str, relpath: str, install_command: str, needed_for: str) -> Path:
    """A file shipped inside an installed package, found without importing the package
    (its own code may import things we do not have, and we only want its data)."""
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise TapsError(f"{needed_for} needs a package that is not installed: run `{install_command}`")
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.is_file():
        raise TapsError(f"{path} is missing; reinstall with `{install_command} --force-reinstall`")
    return path
