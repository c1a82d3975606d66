"""Random-number-generator states of python, numpy and torch (CPU and CUDA), as plain
containers and tensors so that they fit ``torch.load(weights_only=True)``.

Restoring them is what makes a resumed run draw the same dropout masks as an
uninterrupted one.

Imports nothing from lmforge.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def get_rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),  # (version, tuple of ints, gauss or None)
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _cuda_devices() -> int:
    """The CUDA devices this process sees (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def set_rng_state(state: dict[str, Any]) -> str | None:
    """Put ``state`` back. Returns why the CUDA generators were not restored, when they could
    not be (the state is per device: saved with another number of GPUs than this process
    sees); the others are restored all the same."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    devices = _cuda_devices()
    if not cuda or not devices:
        return None  # nothing saved, or nothing here to restore it to (no CUDA draws either)
    if len(cuda) != devices:
        return (
            f"the checkpoint's CUDA random state is for {len(cuda)} GPU{'s' * (len(cuda) != 1)} and this "
            f"process sees {devices}: not restored, so dropout draws differ from an uninterrupted run (the "
            "training goes on)"
        )
    torch.cuda.set_rng_state_all(cuda)
    return None


def derive_seed(seed: int, step: int, rank: int) -> int:
    """A seed for ``rank`` at ``step`` of a run seeded with ``seed``: distinct per rank, the
    same on every machine."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, step, rank, 0x6C6D66]).generate_state(1)[0])


def rank_rng_state(states: list[dict[str, Any]] | None, rank: int) -> dict[str, Any] | None:
    """Rank ``rank``'s RNG state from a checkpoint's per-rank list, or None when that rank was
    not part of the saved run (more processes now than then: the caller reseeds it with
    ``derive_seed``). With fewer processes, ranks keep their own states and the others' go
    unused."""
    if states and rank < len(states):
        return states[rank]
    return None


def restore_rank_rng(state: dict[str, Any], rank: int, *, seed: int, step: int) -> str | None:
    """This rank's RNG state from a full checkpoint. Saved by as many processes as now: each
    rank gets its own back (an exact resume). Saved by fewer: the new ranks are reseeded
    from (seed, step, rank); by more: the extra states go unused. Returns ``set_rng_state``'s
    word on CUDA generators it could not restore."""
    per_rank = state.get("rng_per_rank") or [state["rng"]]  # older checkpoints: rank 0's only
    own = rank_rng_state(per_rank, rank)
    if own is not None:
        return set_rng_state(own)
    seed_everything(derive_seed(seed, step, rank))
    return None
