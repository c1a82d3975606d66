"""Muon's optimizer step with its Newton-Schulz iteration in bf16 (``torch.optim.Muon``) and in
fp32 (lmforge's ``MuonNS``), on the block matrices of a preset's modern model (CPU).

    python benchmarks/muon_step.py                               # this CPU
    ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/muon_step.py        # as on a CPU without bf16
    ONEDNN_MAX_CPU_ISA=AVX512_CORE python benchmarks/muon_step.py # AVX-512, no bf16 (Skylake-SP)

``ONEDNN_MAX_CPU_ISA`` caps the instructions oneDNN (torch's CPU bf16 matmuls) may use, which
shows here what a CPU without bf16 instructions does. lmforge picks fp32 where ``--dtype auto``
would not pick bf16 (``lmforge.device.newton_schulz_dtype``). Median of ``--repeats`` steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from lmforge.config import OptimizerConfig
    from lmforge.model import build_model
    from lmforge.presets import resolve_config
    from lmforge.train.optim import build_optimizer

    config = resolve_config(preset=args.preset, overrides={("recipe",): "modern"})
    model = build_model(config.model)
    optim = OptimizerConfig(optimizer="muon", lr=0.02)
    rows = []
    for label, dtype in (("bf16 (torch.optim.Muon)", torch.bfloat16), ("fp32 (MuonNS)", torch.float32)):
        opt, _ = build_optimizer(model, optim, torch.device("cpu"), ns_dtype=dtype)
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        times = []
        for _ in range(args.repeats + 1):  # the first step makes the momentum buffers
            t0 = time.perf_counter()
            opt.muon.step()
            times.append(time.perf_counter() - t0)
        rows.append((label, 1000 * statistics.median(times[1:])))
    matrices = sum(p.numel() for g in opt.muon.param_groups for p in g["params"])
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "all (this CPU)")
    print(f"{args.preset}: {matrices:,} parameters in Muon's matrices; oneDNN ISA: {isa}; "
          f"{torch.get_num_threads()} threads\n")  # fmt: skip
    print("| Newton-Schulz in | ms per Muon step |\n|---|---:|")
    for label, ms in rows:
        print(f"| {label} | {ms:.1f} |")


if __name__ == "__main__":
    main()
