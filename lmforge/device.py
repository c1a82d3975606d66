"""Devices, precision and hardware peaks.

``dtype=auto`` must never pick bf16 on a CPU that lacks bf16 matrix units:
there a bf16 matmul is hundreds of times slower than fp32.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

import torch

from lmforge.errors import UsageError

DType = Literal["auto", "bf16", "fp16", "fp32"]
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# Dense bf16/fp16 tensor-core peaks in FLOP/s, by a substring of the device name.
# MFU is reported as "n/a" for devices not listed here rather than guessed.
PEAK_FLOPS_BF16: dict[str, float] = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 125e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else MPS, else CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"unknown device {device!r}", "use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} was asked for but CUDA is not available", "use --device cpu")
    return dev


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX bf16 tiles (Sapphire Rapids and newer)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """Turn ``auto`` into bf16, fp16 or fp32 for ``device``; reject impossible choices."""
    if dtype not in ("auto", *TORCH_DTYPES):
        raise UsageError(f"unknown dtype {dtype!r}", "use auto, bf16, fp16 or fp32")
    if dtype != "auto":
        if dtype == "fp16" and device.type == "cpu":
            raise UsageError("fp16 training is not supported on the CPU", "use --dtype fp32 (or bf16)")
        return dtype
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def peak_flops(device: torch.device, dtype: str) -> float | None:
    """Peak FLOP/s of ``device`` at ``dtype``, or None when unknown (MFU is then n/a)."""
    if device.type != "cuda" or dtype == "fp32":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_FLOPS_BF16.items():
        if key in name:
            return flops
    return None


def describe_devices() -> dict[str, object]:
    facts: dict[str, object] = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_fast_bf16": cpu_has_fast_bf16(),
    }
    if torch.cuda.is_available():
        facts["cuda_version"] = torch.version.cuda
        facts["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        facts["cuda_bf16"] = torch.cuda.is_bf16_supported()
    facts["default_device"] = str(resolve_device("auto"))
    facts["default_dtype"] = resolve_dtype("auto", resolve_device("auto"))
    return facts
