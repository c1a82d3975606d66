import pytest
import torch

from lmforge.device import peak_flops, resolve_device, resolve_dtype
from lmforge.errors import UsageError


def test_auto_dtype_on_this_cpu_is_never_slow_bf16(monkeypatch):
    import lmforge.device as device

    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: False)
    assert resolve_dtype("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    assert resolve_dtype("auto", torch.device("cpu")) == "bf16"


def test_explicit_dtypes():
    assert resolve_dtype("fp32", torch.device("cpu")) == "fp32"
    with pytest.raises(UsageError, match="fp16 training is not supported on the CPU"):
        resolve_dtype("fp16", torch.device("cpu"))
    with pytest.raises(UsageError, match="unknown dtype"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(UsageError):
        resolve_device("banana")
    assert peak_flops(torch.device("cpu"), "bf16") is None
