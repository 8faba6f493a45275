"""`benchmarks/tables.py`'s bootstrap intervals: paired by prompt, resampled within each benchmark."""

import importlib.util
from pathlib import Path

import pytest

TABLES = Path(__file__).resolve().parents[1] / "benchmarks" / "tables.py"


@pytest.fixture(scope="module")
def tables():
    spec = importlib.util.spec_from_file_location("benchmark_tables", TABLES)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(rows: dict[str, list[float]]) -> dict:
    """Two benchmarks of 4 prompts, 8 tokens each; `rows`: seconds per prompt."""
    meta = {"benchmarks": "gsm8k,mt_bench", "prompts_per_benchmark": 4}
    return {"meta": meta, "rows": {n: {"outputs": [[0] * 8] * 8, "seconds": s} for n, s in rows.items()}}


def test_a_row_exactly_twice_as_fast_has_no_spread(tables):
    plain = [1.0, 2.0, 1.5, 1.2, 3.0, 2.5, 2.0, 1.0]
    result = _result({"taps plain": plain, "fast": [s / 2 for s in plain]})
    ratio, low, high = tables.paired_interval(result, "fast")
    assert ratio == pytest.approx(2.0) and low == pytest.approx(2.0) and high == pytest.approx(2.0)


def test_an_uneven_row_gets_an_interval_around_its_ratio(tables):
    result = _result({"taps plain": [1.0] * 8, "noisy": [0.5, 0.9, 0.6, 1.1, 0.7, 0.5, 1.2, 0.6]})
    ratio, low, high = tables.paired_interval(result, "noisy")
    assert low < ratio < high and high - low > 0.1
    assert tables.paired_interval(result, "noisy") == (ratio, low, high)  # seeded
    assert tables.pair_line(result, "noisy", "taps plain").startswith(f"noisy over taps plain: {ratio:.3f}x")
    with pytest.raises(SystemExit, match="no row 'missing'"):
        tables.pair_line(result, "missing", "taps plain")
