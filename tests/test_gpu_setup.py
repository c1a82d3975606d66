"""The CUDA set-up, checked on the CPU with ``torch.cuda`` mocked: the precision ``auto`` picks
by compute capability, MFU against the matching peak, TF32 through one API, the peak table."""

from __future__ import annotations

import types
import warnings

import pytest
import torch

from lmforge import device
from lmforge.device import PEAK_FLOPS, enable_tf32, peak_flops, peak_row, resolve_precision

CUDA = torch.device("cuda", 0)


@pytest.fixture
def gpu(monkeypatch):
    """A fake GPU: ``gpu("Tesla V100-SXM2-16GB", (7, 0))``."""

    def install(name: str, capability: tuple[int, int]) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)
        # what misled dtype=auto before: it counts emulated bf16 as support
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)

    return install


@pytest.mark.parametrize(
    ("name", "capability", "dtype", "peak"),
    [
        ("Tesla V100-SXM2-16GB", (7, 0), "fp16", 125e12),
        ("Tesla T4", (7, 5), "fp16", 65e12),
        ("NVIDIA A100-SXM4-80GB", (8, 0), "bf16", 312e12),
        ("NVIDIA H100 80GB HBM3", (9, 0), "bf16", 989e12),
    ],
)
def test_auto_precision_by_compute_capability(gpu, name, capability, dtype, peak):
    gpu(name, capability)
    chosen, why = resolve_precision("auto", CUDA)
    assert chosen == dtype and f"compute capability {capability[0]}.{capability[1]}" in why
    assert peak_flops(CUDA, chosen) == peak  # MFU against the peak of the precision it runs in


def test_mfu_peak_follows_the_dtype(gpu):
    gpu("Tesla V100-SXM2-16GB", (7, 0))
    assert peak_flops(CUDA, "bf16") is None  # emulated on Volta: no peak to measure against
    assert peak_flops(CUDA, "fp32") is None
    gpu("NVIDIA A100-SXM4-80GB", (8, 0))
    assert peak_flops(CUDA, "fp16") == peak_flops(CUDA, "bf16") == 312e12


@pytest.mark.parametrize(
    ("name", "row", "bf16"),
    [
        ("NVIDIA H100 80GB HBM3", "H100", 989e12),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", "H100 NVL", 835e12),
        ("NVIDIA H800", "H800", 989e12),
        ("NVIDIA H800 PCIe", "H800 PCIe", 756e12),
        ("NVIDIA H200", "H200", 989e12),
        ("NVIDIA H200 NVL", "H200 NVL", 835e12),
        ("NVIDIA GH200 480GB", "GH200", 989e12),
        ("NVIDIA B200", "B200", 2250e12),
        ("NVIDIA A100-SXM4-40GB", "A100", 312e12),
        ("NVIDIA A800 80GB PCIe", "A800", 312e12),
        ("NVIDIA A40", "A40", 149.7e12),
        ("NVIDIA A30", "A30", 165e12),
        ("NVIDIA A10", "A10", 125e12),
        ("NVIDIA A10G", "A10G", None),
        ("NVIDIA L40S", "L40S", 362e12),
        ("NVIDIA L40", "L40", 181e12),
        ("NVIDIA L4", "L4", 121e12),
        ("NVIDIA GeForce RTX 4090", "RTX 4090", 165e12),
        ("NVIDIA GeForce RTX 3090", "RTX 3090", 71e12),
        ("Tesla V100-PCIE-32GB", "V100", None),
        ("Tesla T4", "T4", None),
        ("NVIDIA RTX A4000", None, None),  # not an A40
        ("NVIDIA A1000", None, None),  # not an A100
    ],
)
def test_each_device_name_resolves_to_its_own_row(gpu, name, row, bf16):
    assert peak_row(name) == row
    gpu(name, (9, 0))
    assert peak_flops(CUDA, "bf16") == bf16


def test_every_row_is_reachable_by_its_own_name():
    for name in PEAK_FLOPS:
        assert peak_row(f"NVIDIA {name}") == name


class _Backend:
    """A ``torch.backends`` namespace that warns like a CUDA build of torch >= 2.9 does when the
    legacy flag is set, and records what was set."""

    def __init__(self) -> None:
        self.__dict__["fp32_precision"] = "none"

    def __setattr__(self, key, value):
        if key == "allow_tf32":
            warnings.warn("Please use the new API settings to control TF32", UserWarning, stacklevel=2)
        self.__dict__[key] = value


@pytest.fixture
def backends(monkeypatch):
    matmul, cudnn, conv = _Backend(), _Backend(), _Backend()
    cudnn.__dict__["conv"] = conv
    monkeypatch.setattr(torch.backends, "cuda", types.SimpleNamespace(matmul=matmul))
    monkeypatch.setattr(torch.backends, "cudnn", cudnn)
    return matmul, cudnn, conv


def test_tf32_through_the_new_api_on_recent_torch(backends, monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.11.0+cu128")
    matmul, cudnn, conv = backends
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enable_tf32()
    assert matmul.fp32_precision == "tf32" and conv.fp32_precision == "tf32"
    assert "allow_tf32" not in vars(matmul) and "allow_tf32" not in vars(cudnn)  # never mixed


def test_tf32_through_the_legacy_flags_before_2_9(backends, monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.8.0")
    matmul, cudnn, conv = backends
    with warnings.catch_warnings(record=True):
        enable_tf32()
    assert matmul.allow_tf32 is True and cudnn.allow_tf32 is True
    assert matmul.fp32_precision == "none"


def test_torch_version_comparison(monkeypatch):
    for version, at_least in (("2.9.0", True), ("2.10.1+cu126", True), ("2.8.1", False), ("3.0.0a0", True)):
        monkeypatch.setattr(torch, "__version__", version)
        assert device.torch_version_at_least(2, 9) is at_least


# ----------------------------------------------------------------------------- NCCL set-up


@pytest.fixture
def fake_dist(monkeypatch):
    """``torch.distributed`` and ``torch.cuda`` calls of the set-up, recorded instead of made."""
    from lmforge import distributed

    calls: list[tuple] = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", torch.device(d))))
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: calls.append(("init", kw)))
    monkeypatch.setattr(distributed.dist, "barrier", lambda *a, **k: calls.append(("barrier",)))
    monkeypatch.setattr(distributed, "is_initialized", lambda: False)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    return calls


def test_nccl_group_is_bound_to_the_local_gpu(fake_dist, monkeypatch):
    from lmforge.distributed import INIT_TIMEOUT, init_distributed

    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = init_distributed(torch.device("cuda", 1))
    assert info.rank == 3 and info.local_rank == 1 and info.world_size == 4
    assert fake_dist == [
        ("set_device", torch.device("cuda", 1)),
        ("init", {"backend": "nccl", "timeout": INIT_TIMEOUT, "device_id": torch.device("cuda", 1)}),
    ]


def test_gloo_group_has_no_device(fake_dist, monkeypatch):
    from lmforge.distributed import INIT_TIMEOUT, init_distributed

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    init_distributed("cpu")
    assert fake_dist == [("init", {"backend": "gloo", "timeout": INIT_TIMEOUT})]


def test_one_process_on_cuda_n_makes_n_current(fake_dist):
    from lmforge.distributed import init_distributed

    assert not init_distributed(torch.device("cuda", 2)).enabled
    assert fake_dist == [("set_device", torch.device("cuda", 2))]
    fake_dist.clear()
    init_distributed("cpu")
    init_distributed("cuda")  # no index: the current device stays
    assert fake_dist == []


def test_shorter_timeout_after_the_first_step(fake_dist, monkeypatch):
    from torch.distributed import distributed_c10d

    from lmforge import distributed

    set_to: list = []
    monkeypatch.setattr(distributed_c10d, "_set_pg_timeout", lambda t, group=None: set_to.append(t))
    distributed.use_step_timeout()  # one process: nothing to do
    assert fake_dist == [] and set_to == []
    monkeypatch.setattr(distributed, "is_initialized", lambda: True)
    distributed.use_step_timeout()
    assert fake_dist == [("barrier",)] and set_to == [distributed.STEP_TIMEOUT]
    assert distributed.STEP_TIMEOUT < distributed.INIT_TIMEOUT
