"""Devices, precision and hardware peaks.

``dtype=auto`` must never pick bf16 on a CPU that lacks bf16 matrix units:
there a bf16 matmul is hundreds of times slower than fp32.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from lmforge.errors import UsageError

DType = Literal["auto", "bf16", "fp16", "fp32"]
TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# Dense (not sparse) 16-bit tensor-core peaks in FLOP/s with fp32 accumulation, ``(bf16, fp16)``,
# by the model name in the device name, from the vendor's datasheets (which print the sparse
# figure, twice the dense one, first). A name matches as a whole word ("L4" is not "L40", "H200"
# not "GH200", "A40" not "RTX A4000"), and rows are checked in order, so "H100 NVL" and "H100
# PCIe" come before "H100". MFU is "n/a" for a device or dtype not listed (or listed as None)
# rather than guessed: fp32 (TF32) included.
PEAK_FLOPS: dict[str, tuple[float | None, float | None]] = {
    # Hopper. H100 datasheet: SXM 1,979 sparse; PCIe 1,513 sparse; NVL (94 GB, one GPU) 1,671 sparse
    "H100 NVL": (835e12, 835e12),
    "H100 PCIe": (756e12, 756e12),
    "H100": (989e12, 989e12),
    # H800 (the H100 for China) datasheet: SXM 1,979 sparse, PCIe 1,513 sparse, as the H100
    "H800 PCIe": (756e12, 756e12),
    "H800": (989e12, 989e12),
    # GH200 Grace Hopper datasheet: its H100 at 1,979 sparse. Before "H200": GH200's name is no H200
    "GH200": (989e12, 989e12),
    # H200 datasheet: SXM 1,979 sparse; NVL 1,671 sparse
    "H200 NVL": (835e12, 835e12),
    "H200": (989e12, 989e12),
    # Blackwell. HGX B200 datasheet: 4.5 PFLOPS sparse per GPU
    "B200": (2250e12, 2250e12),
    # Ampere. A100 datasheet: 312 (624 sparse), SXM and PCIe; A800 is the A100 die
    "A100": (312e12, 312e12),
    "A800": (312e12, 312e12),
    "A40": (149.7e12, 149.7e12),  # A40 datasheet: BF16/FP16 149.7 (299.4 sparse)
    "A30": (165e12, 165e12),  # A30 datasheet: BF16/FP16 165 (330 sparse)
    "A10G": (None, None),  # AWS's variant of the A10: NVIDIA publishes no tensor figure for it
    "A10": (125e12, 125e12),  # A10 datasheet: BF16/FP16 125 (250 sparse)
    # Ada. L40S datasheet: 362.05 (733 sparse); L40 datasheet: 181.05 (362.1 sparse); L4
    # datasheet: 121 (242 sparse)
    "L40S": (362e12, 362e12),
    "L40": (181e12, 181e12),
    "L4": (121e12, 121e12),
    "RTX 4090": (165e12, 165e12),  # Ada whitepaper: 165.2 with fp32 accumulate (330.3 sparse)
    # GA102 whitepaper, appendix A: with fp32 accumulate 71 dense / 142 sparse (35.6 is the
    # card's non-tensor fp32 figure, not its bf16 one)
    "RTX 3090": (71e12, 71e12),
    # Volta and Turing have fp16 tensor cores and no bf16 (bf16 runs emulated: no peak)
    "V100": (None, 125e12),  # V100 datasheet, SXM2: 125 fp16 tensor (PCIe: 112)
    "T4": (None, 65e12),  # T4 datasheet: 65 fp16 tensor
}
# the bf16 column alone (what earlier versions called the table)
PEAK_FLOPS_BF16: dict[str, float | None] = {name: peaks[0] for name, peaks in PEAK_FLOPS.items()}

# bf16 tensor cores from compute capability 8.0 (Ampere) on; below it (V100 7.0, T4 7.5)
# ``torch.cuda.is_bf16_supported()`` still says yes, counting the (slow) emulation
BF16_MIN_CAPABILITY = (8, 0)


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


# bf16 is used on a CPU only where a bf16 matmul is clearly faster than fp32 (measured).
MIN_BF16_SPEEDUP = 1.2
_X86_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class CpuBf16:
    """Whether this CPU runs bf16 matmuls fast, and why lmforge thinks so."""

    fast: bool
    reason: str
    speedup: float | None = None  # fp32 time / bf16 time of the check matmul, when measured


def cpu_model_name(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware", "CPU part"):
            return value.strip()
    return platform.processor() or platform.machine()


def cpu_bf16_instructions(cpuinfo: str) -> list[str]:
    """The bf16 matrix instructions ``/proc/cpuinfo`` text advertises: x86 ``amx_bf16`` /
    ``avx512_bf16`` (``flags``), Arm ``bf16`` (``Features``)."""
    found: list[str] = []
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        words = set(value.split())
        if key.strip() == "flags":
            found += [f for f in _X86_BF16_FLAGS if f in words and f not in found]
        elif key.strip() == "Features" and "bf16" in words and "bf16" not in found:
            found.append("bf16")
    return found


def _apple_bf16() -> list[str]:
    """Apple silicon (M2 and newer) says so through sysctl, not /proc/cpuinfo."""
    import subprocess

    try:
        out = subprocess.run(
            ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=2
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return []
    return ["FEAT_BF16"] if out == "1" else []


def measure_bf16_speedup(size: int = 256, repeats: int = 5) -> float:
    """fp32 time / bf16 time of a ``size`` x ``size`` matmul (best of ``repeats``). Well under a
    second even where bf16 is emulated: there one bf16 product takes tens of milliseconds."""
    import time

    def best(dtype: torch.dtype) -> float:
        a = torch.randn(size, size).to(dtype)
        b = torch.randn(size, size).to(dtype)
        a @ b  # warm-up: kernel selection, page faults
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(torch.float32) / max(best(torch.bfloat16), 1e-9)


# The probe's matmul width by (device type, dtype). CPU fp32 at 1024: a 512-wide product is
# dominated by thread start-up on a 2-core AVX2 machine (4-17 GFLOP/s across runs, against
# ~110 GFLOP/s that training reaches there); bf16 stays at 512, the width its efficiency was
# calibrated at (on an AVX512-BF16 CPU), and where an emulated bf16 product still takes only
# tens of milliseconds.
PROBE_WIDTH = {("cpu", "fp32"): 1024, ("cpu", "bf16"): 512}
GPU_PROBE_WIDTH = 4096  # large enough to reach a GPU's tensor cores


def measure_matmul_flops(device: torch.device, dtype: str = "fp32", repeats: int = 7) -> float:
    """FLOP/s of a square matmul on ``device`` in ``dtype``: the median of ``repeats`` timed
    products after two untimed ones (thread pool start, kernel selection, page faults), in well
    under a second. The median, not the best: on a shared machine the best is a lucky moment."""
    import statistics
    import time

    if device.type == "cpu":
        size = PROBE_WIDTH.get((device.type, dtype), 512)
    else:
        size = GPU_PROBE_WIDTH
    dt = TORCH_DTYPES[dtype]
    # a generator of its own: drawing from the global one would change a run's (or a resumed
    # run's) dropout masks and data order from what they were without the measurement
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=g).to(dt)
    b = torch.randn(size, size, device=device, generator=g).to(dt)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # kernels are asynchronous: time them, not their launch

    for _ in range(2):  # warm-up
        a @ b
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t0)
    return 2 * size**3 / max(statistics.median(times), 1e-9)


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_bf16(
    cpuinfo: str | None = None,
    measure: Callable[[], float] = measure_bf16_speedup,
    cache_dir: Path | None = None,
) -> CpuBf16:
    """Decide whether bf16 autocast pays on this CPU: the instructions must be there and a quick
    measurement must confirm them (flags alone have been wrong: a VM may pass them through to an
    emulating host). The measurement is cached in ``cache_dir`` per CPU model and torch version."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    flags = cpu_bf16_instructions(text)
    if not flags and cpuinfo is None and sys.platform == "darwin":
        flags = _apple_bf16()
    if not flags:
        return CpuBf16(False, "no bf16 instructions (avx512_bf16, amx_bf16, Arm bf16) on this CPU")
    key = f"{cpu_model_name(text)} | {'+'.join(flags)} | torch {torch.__version__}"
    cache = cache_dir / "cpu-bf16.json" if cache_dir is not None else None
    speedup = _cached_speedup(cache, key)
    if speedup is None:
        speedup = float(measure())
        _store_speedup(cache, key, speedup)
    fast = speedup >= MIN_BF16_SPEEDUP
    verdict = "bf16 autocast" if fast else f"fp32 (bf16 not at least {MIN_BF16_SPEEDUP}x faster)"
    return CpuBf16(fast, f"{'+'.join(flags)}; bf16 matmul {speedup:.2g}x fp32 -> {verdict}", speedup)


def _cached_speedup(cache: Path | None, key: str) -> float | None:
    if cache is None:
        return _SPEEDUPS.get(key)
    try:
        value = json.loads(cache.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _store_speedup(cache: Path | None, key: str, speedup: float) -> None:
    _SPEEDUPS[key] = speedup
    if cache is None:
        return
    from lmforge.fileio import write_json_atomic

    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cache, {**known, key: speedup})
    except OSError:
        pass  # a read-only workspace: measure again next time


_SPEEDUPS: dict[str, float] = {}  # this process's measurements, when no cache directory is given


def resolve_dtype(dtype: str, device: torch.device, cache_dir: Path | None = None) -> str:
    """Turn ``auto`` into bf16, fp16 or fp32 for ``device``; reject impossible choices."""
    return resolve_precision(dtype, device, cache_dir)[0]


def resolve_precision(dtype: str, device: torch.device, cache_dir: Path | None = None) -> tuple[str, str]:
    """``(dtype, why)``: ``auto`` made concrete for ``device``, with the reason in words."""
    if dtype not in ("auto", *TORCH_DTYPES):
        raise UsageError(f"unknown dtype {dtype!r}", "use auto, bf16, fp16 or fp32")
    if dtype != "auto":
        if dtype == "fp16" and device.type == "cpu":
            raise UsageError("fp16 is not supported on the CPU", "use --dtype bf16 or fp32 (or auto)")
        return dtype, f"--dtype {dtype}"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) >= BF16_MIN_CAPABILITY:
            return "bf16", f"a GPU with bf16 tensor cores (compute capability {major}.{minor})"
        below = f"compute capability {major}.{minor} < 8.0"
        return "fp16", f"a GPU without bf16 tensor cores ({below}): fp16 with loss scaling"
    if device.type == "cpu":
        choice = cpu_bf16(cache_dir=cache_dir)
        return ("bf16" if choice.fast else "fp32"), choice.reason
    return "fp32", f"{device.type}: fp32"


def newton_schulz_dtype(device: torch.device, cache_dir: Path | None = None) -> torch.dtype:
    """The precision of Muon's Newton-Schulz iteration: bf16 (``torch.optim.Muon``'s) wherever
    bf16 matmuls are fast, fp32 on a CPU where they are not (emulated there: several times slower
    than fp32). The CPU verdict is the one ``--dtype auto`` uses, cached in ``cache_dir``."""
    if device.type != "cpu" or cpu_bf16(cache_dir=cache_dir).fast:
        return torch.bfloat16
    return torch.float32


# A CPU compile of the tiny preset takes ~20 s and pays back after ~50 steps (bf16); below this
# many steps of a run, compile=auto stays eager.
MIN_STEPS_TO_COMPILE_ON_CPU = 200


def resolve_compile(
    setting: str, device: torch.device, dtype: str, steps: int | None = None
) -> tuple[bool, str]:
    """``(compile?, why)`` for ``--compile auto|on|off``. On a CPU, auto compiles only where it was
    measured to pay (bf16: 1.4x on the tiny preset; fp32: slower), a C++ compiler exists (the CPU
    backend generates C++) and the run is long enough to win back the compilation time."""
    if setting in ("on", "off"):
        return setting == "on", f"--compile {setting}"
    if device.type == "cuda":
        return True, "CUDA"
    if device.type != "cpu":
        return False, f"{device.type}: eager"
    if dtype != "bf16":
        return False, "CPU in fp32: compiling does not pay"
    if not cxx_compiler():
        return False, "no C++ compiler (g++/clang++/$CXX) for the CPU backend"
    if steps is not None and steps < MIN_STEPS_TO_COMPILE_ON_CPU:
        return (
            False,
            f"a short run ({steps} < {MIN_STEPS_TO_COMPILE_ON_CPU} steps): compiling would not pay back",
        )
    return True, "CPU in bf16 with a C++ compiler"


def cxx_compiler() -> str | None:
    import shutil

    cxx = os.environ.get("CXX")
    if cxx and shutil.which(cxx):
        return shutil.which(cxx)
    return next((path for name in ("g++", "c++", "clang++") if (path := shutil.which(name))), None)


def peak_row(name: str) -> str | None:
    """The row of ``PEAK_FLOPS`` for a device named ``name`` (``torch.cuda.get_device_name``)."""
    import re

    return next((key for key in PEAK_FLOPS if re.search(rf"(?<!\w){re.escape(key)}(?!\w)", name)), None)


def peak_flops(device: torch.device, dtype: str) -> float | None:
    """Peak FLOP/s of ``device`` at ``dtype`` (bf16 or fp16: the column of the precision the run
    computes in), or None when unknown (MFU is then n/a)."""
    if device.type != "cuda" or dtype not in ("bf16", "fp16"):
        return None
    row = peak_row(torch.cuda.get_device_name(device))
    return PEAK_FLOPS[row][0 if dtype == "bf16" else 1] if row is not None else None


def torch_version_at_least(major: int, minor: int) -> bool:
    """``torch.__version__`` >= major.minor (local and pre-release tags ignored)."""
    import re

    found = re.match(r"(\d+)\.(\d+)", torch.__version__)
    return found is not None and (int(found[1]), int(found[2])) >= (major, minor)


def enable_tf32() -> None:
    """TF32 tensor cores for the fp32 matmuls and convolutions that remain (Ampere+: ~8x faster,
    10-bit mantissa), through one API: ``fp32_precision`` on torch >= 2.9, where the legacy
    ``allow_tf32`` flags are deprecated and mixing the two is an error in Inductor (transformers
    and lm-eval may set the new one); the legacy flags on older torch, which lacks the new API."""
    if torch_version_at_least(2, 9):
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def describe_devices() -> dict[str, object]:
    facts: dict[str, object] = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cpu_threads": torch.get_num_threads(),
        "cpu": cpu_model_name(_read_cpuinfo()),
        "cpu_bf16": cpu_bf16().reason,
    }
    if torch.cuda.is_available():
        facts["cuda_version"] = torch.version.cuda
        facts["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        major, minor = torch.cuda.get_device_capability()
        facts["cuda_bf16"] = (major, minor) >= BF16_MIN_CAPABILITY
    facts["default_device"] = str(resolve_device("auto"))
    device = resolve_device("auto")
    facts["default_dtype"], facts["dtype_reason"] = resolve_precision("auto", device)
    compiled, facts["compile_reason"] = resolve_compile("auto", device, facts["default_dtype"])
    facts["default_compile"] = "on" if compiled else "off"
    return facts
