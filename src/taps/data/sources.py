"""Where every data file comes from: its official source, its checksum, and the local mirror.

Resolution order for a file: the local mirror folder (`data_dir` argument, else `TAPS_DATA_DIR`),
then taps's download cache, then a verified download for machines with internet. Every file is
checked against its sha256, so a truncated or altered copy is caught before it is parsed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from taps.config import taps_home
from taps.errors import TapsError


@dataclass(frozen=True)
class DataFile:
    relpath: str  # path inside a mirror folder (and the cache)
    url: str | None  # official upstream file; None where upstream has no single raw file
    sha256: str


_GH = "https://raw.githubusercontent.com"
FILES: dict[str, DataFile] = {
    "mt_bench": DataFile(
        "mt_bench/question.jsonl",
        f"{_GH}/lm-sys/FastChat/main/fastchat/llm_judge/data/mt_bench/question.jsonl",
        "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7",
    ),
    "gsm8k/test": DataFile(
        "gsm8k/test.jsonl",
        f"{_GH}/openai/grade-school-math/master/grade_school_math/data/test.jsonl",
        "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    ),
    "gsm8k/train": DataFile(
        "gsm8k/train.jsonl",
        f"{_GH}/openai/grade-school-math/master/grade_school_math/data/train.jsonl",
        "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
    ),
    "math500": DataFile(
        "math500/test.jsonl",
        "https://github.com/openai/prm800k/raw/main/prm800k/math_splits/test.jsonl",
        "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132",
    ),
    "svamp": DataFile(
        "svamp/SVAMP.json",
        f"{_GH}/arkilpatel/SVAMP/main/SVAMP.json",
        "5be77703a6d891ae476d7c082787ad361392aa02453b132516cdd5f4e7934e3e",
    ),
    "math/train": DataFile(
        "math/train.jsonl", None, "00aa30008a611172529ab775ed6f3af9efd32974625b19181c3ebfc724134e52"
    ),
    "aqua_rat/dev": DataFile(
        "aqua_rat/dev.json",
        f"{_GH}/google-deepmind/AQuA/master/dev.json",
        "4a52301d8a49ae0b286f8e697f9c5da1b109b247b825b47b4c6de34312dceec5",
    ),
    "aqua_rat/test": DataFile(
        "aqua_rat/test.json",
        f"{_GH}/google-deepmind/AQuA/master/test.json",
        "de41581881ef95c5588c44ddc701c77fd480839241dd422a0d181262af24520c",
    ),
}

_verified: set[tuple[Path, str]] = set()


def mirror_dir(data_dir: str | Path | None = None) -> Path | None:
    chosen = data_dir or os.environ.get("TAPS_DATA_DIR")
    return Path(chosen).expanduser() if chosen else None


def resolve(key: str, data_dir: str | Path | None = None) -> Path:
    """A verified local path for data file `key` (see FILES)."""
    if key not in FILES:
        raise TapsError(f"unknown data file {key!r}; known: {', '.join(FILES)}")
    spec = FILES[key]
    mirror = mirror_dir(data_dir)
    if mirror is not None and (mirror / spec.relpath).is_file():
        return _verify(mirror / spec.relpath, spec)
    cached = taps_home() / "data" / spec.relpath
    if cached.is_file():
        return _verify(cached, spec)
    where = f"the data mirror {mirror}" if mirror else "no data mirror (none set)"
    if spec.url is None:
        raise TapsError(
            f"{spec.relpath} not found in {where} and it has no single official download; "
            "set --data-dir or TAPS_DATA_DIR to a folder holding it"
        )
    try:
        _download(spec.url, cached)
    except OSError as exc:
        raise TapsError(
            f"{spec.relpath} not found in {where} and download failed ({exc}); "
            "set --data-dir or TAPS_DATA_DIR to a folder holding it"
        ) from exc
    return _verify(cached, spec)


def _verify(path: Path, spec: DataFile) -> Path:
    if (path, spec.sha256) in _verified:
        return path
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    if h.hexdigest() != spec.sha256:
        raise TapsError(
            f"{path} has sha256 {h.hexdigest()[:12]}…, expected {spec.sha256[:12]}… "
            "(truncated or altered copy); restore the official file"
        )
    _verified.add((path, spec.sha256))
    return path


def _download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp,
        urllib.request.urlopen(url, timeout=60) as r,
    ):
        while block := r.read(1 << 20):
            tmp.write(block)
    os.replace(tmp.name, dest)
