"""Devices and precision: the bf16 choice on CPUs (faked /proc/cpuinfo and measurements), the
compile choice, the peak table."""

import json

import pytest
import torch

import lmforge.device as device
from lmforge.device import (
    PEAK_FLOPS_BF16,
    cpu_bf16,
    cpu_bf16_instructions,
    peak_flops,
    resolve_compile,
    resolve_device,
    resolve_dtype,
    resolve_precision,
)
from lmforge.errors import UsageError

SAPPHIRE = (
    "processor\t: 0\nmodel name\t: Intel Xeon Platinum 8480+\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n"
)
COOPER = "processor\t: 0\nmodel name\t: Intel Xeon 8380H\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n"
SKYLAKE = "processor\t: 0\nmodel name\t: Intel Xeon Gold 6154\nflags\t\t: fpu avx512f avx512bw avx512_vnni\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU part\t: 0xd40\n"


def _never(*_):
    raise AssertionError("no measurement expected")


def test_instructions_are_read_from_cpuinfo():
    assert cpu_bf16_instructions(SAPPHIRE) == ["amx_bf16"]
    assert cpu_bf16_instructions(COOPER) == ["avx512_bf16"]
    assert cpu_bf16_instructions(SKYLAKE) == []
    assert cpu_bf16_instructions(GRAVITON3) == ["bf16"]


def test_no_instructions_means_fp32_without_measuring():
    choice = cpu_bf16(SKYLAKE, measure=_never)
    assert not choice.fast and "no bf16 instructions" in choice.reason


@pytest.mark.parametrize("cpuinfo", [SAPPHIRE, COOPER, GRAVITON3])
def test_instructions_confirmed_by_a_measurement(cpuinfo, tmp_path):
    choice = cpu_bf16(cpuinfo, measure=lambda: 2.4, cache_dir=tmp_path)
    assert choice.fast and choice.speedup == 2.4 and "2.4x" in choice.reason


def test_instructions_refused_when_the_measurement_says_slow(tmp_path):
    # e.g. a VM that passes the flag through to a host that emulates the instructions
    choice = cpu_bf16(COOPER, measure=lambda: 0.01, cache_dir=tmp_path)
    assert not choice.fast and "fp32" in choice.reason


def test_the_measurement_is_cached_per_cpu_model_in_the_workspace(tmp_path):
    calls = []

    def measure():
        calls.append(1)
        return 2.0

    assert cpu_bf16(COOPER, measure=measure, cache_dir=tmp_path).fast
    assert cpu_bf16(COOPER, measure=_never, cache_dir=tmp_path).fast  # from the cache file
    cache = json.loads((tmp_path / "cpu-bf16.json").read_text())
    assert [k.split(" | ")[0] for k in cache] == ["Intel Xeon 8380H"]
    cpu_bf16(SAPPHIRE, measure=measure, cache_dir=tmp_path)  # another CPU model: measured again
    assert len(calls) == 2 and len(json.loads((tmp_path / "cpu-bf16.json").read_text())) == 2


def test_a_corrupt_cache_is_measured_again(tmp_path):
    (tmp_path / "cpu-bf16.json").write_text("{not json")
    assert cpu_bf16(COOPER, measure=lambda: 3.0, cache_dir=tmp_path).fast


def test_auto_dtype_on_the_cpu_follows_the_choice(monkeypatch):
    monkeypatch.setattr(device, "cpu_bf16", lambda cache_dir=None: device.CpuBf16(False, "slow"))
    assert resolve_precision("auto", torch.device("cpu")) == ("fp32", "slow")
    monkeypatch.setattr(device, "cpu_bf16", lambda cache_dir=None: device.CpuBf16(True, "fast", 2.4))
    assert resolve_dtype("auto", torch.device("cpu")) == "bf16"
    assert resolve_dtype("fp32", torch.device("cpu")) == "fp32"  # --dtype fp32 still forces fp32


def test_the_real_measurement_is_quick_and_positive():
    import time

    t0 = time.perf_counter()
    speedup = device.measure_bf16_speedup()
    assert speedup > 0 and time.perf_counter() - t0 < 5


def test_explicit_dtypes():
    assert resolve_dtype("fp32", torch.device("cpu")) == "fp32"
    with pytest.raises(UsageError, match="fp16 is not supported on the CPU"):
        resolve_dtype("fp16", torch.device("cpu"))
    with pytest.raises(UsageError, match="unknown dtype"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_compile_choice(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cxx_compiler", lambda: "/usr/bin/g++")
    assert resolve_compile("auto", cpu, "bf16", steps=2000)[0]
    assert not resolve_compile("auto", cpu, "fp32", steps=2000)[0]
    assert not resolve_compile("auto", cpu, "bf16", steps=20)[0]  # too short to pay back
    assert resolve_compile("on", cpu, "fp32", steps=1) == (True, "--compile on")
    assert resolve_compile("off", torch.device("cuda"), "bf16") == (False, "--compile off")
    assert resolve_compile("auto", torch.device("cuda"), "bf16")[0]
    monkeypatch.setattr(device, "cxx_compiler", lambda: None)
    compiled, why = resolve_compile("auto", cpu, "bf16", steps=2000)
    assert not compiled and "C++ compiler" in why


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(UsageError):
        resolve_device("banana")
    assert peak_flops(torch.device("cpu"), "bf16") is None


def test_peak_table_is_ordered_so_specific_names_match_first():
    names = list(PEAK_FLOPS_BF16)
    for specific, general in (("H100 PCIe", "H100"), ("A10G", "A10"), ("GH200", "H100")):
        if general in specific:
            assert names.index(specific) < names.index(general)
    assert PEAK_FLOPS_BF16["RTX 3090"] == 71e12 and PEAK_FLOPS_BF16["H100"] == 989e12
