"""Device selection: `auto` finds CUDA when present, and an unavailable device is one clear error."""

import pytest
import torch

from taps.cli import main
from taps.device import fast_dtype, resolve_device
from taps.errors import TapsError


def test_auto_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device(None) == resolve_device("CPU")


def test_auto_is_the_first_gpu_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert fast_dtype(torch.device("cuda", 0)) == torch.bfloat16
    with pytest.raises(TapsError, match="only 2 CUDA device"):
        resolve_device("cuda:2")


@pytest.mark.parametrize(
    "spec,message",
    [
        ("cuda", "--device cpu"),
        ("cuda:0", "--device cpu"),
        ("tpu0", "unknown device"),
        ("meta", "not supported"),
    ],
)
def test_unavailable_or_unknown_devices_are_clear_errors(monkeypatch, spec, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TapsError, match=message):
        resolve_device(spec)


def test_cli_reports_a_missing_gpu_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["generate", "hi", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("taps: error: --device cuda:") and "\n" not in err


def test_the_machine_description_names_the_cpu_generation(tmp_path, monkeypatch):
    """A virtual machine's CPU model name ('AMD EPYC') hides the generation that speed figures depend
    on; the description adds family and model from the first processor's fields."""
    import taps.device

    first = "processor\t: 0\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
    info = first + "\nprocessor\t: 1\nmodel\t\t: 9\n"
    (tmp_path / "cpuinfo").write_text(info)
    real_path = taps.device.Path
    monkeypatch.setattr(
        taps.device, "Path", lambda p: tmp_path / "cpuinfo" if p == "/proc/cpuinfo" else real_path(p)
    )
    assert taps.device.machine_description().startswith("AMD EPYC (family 26, model 2), ")
