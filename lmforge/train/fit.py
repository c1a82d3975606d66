"""Settings that do not fit the run they are part of, caught before it starts.

Each is valid on its own and wrong beside the others, so ``__post_init__`` cannot see it:

- A warmup as long as the run (GPT-2's 4,000 steps in a 2,000-step run) never lets the
  learning rate reach its peak, and the decay never happens. A new run gets its warmup
  clamped to a tenth of its steps, with a warning. Clamping, not a warmup fraction: the
  seed and the literature give warmup in steps, the saved ``config.toml`` files of earlier
  runs say steps, and the clamped value is written to the run's config, so raising
  ``--steps`` on ``--resume`` keeps the schedule the run was trained with. A resumed run is
  only warned: clamping mid-run would jump the learning rate.
- A sliding-window stride above the block size leaves the tokens between windows out of
  training.

May import ``config`` and ``units``.
"""

from __future__ import annotations

import dataclasses

from lmforge.config import TrainingConfig
from lmforge.units import plural

# What a too-long warmup is clamped to, as a fraction of the run's steps.
CLAMPED_WARMUP_FRACTION = 0.1


def fit_to_run(config: TrainingConfig, *, resumed: bool = False) -> tuple[TrainingConfig, list[str]]:
    """``config`` with a warmup that fits its steps (not on a resumed run), and the warnings to show."""
    warnings: list[str] = []
    steps, warmup = config.train.steps, config.optim.warmup_steps
    if warmup >= steps:
        if resumed:
            warnings.append(
                f"the warmup ({plural(warmup, 'step')}) is not shorter than the run "
                f"({plural(steps, 'step')}): the "
                "learning rate never reaches its peak; give --warmup-steps to change it"
            )
        else:
            fitted = int(steps * CLAMPED_WARMUP_FRACTION)
            # a run under ten steps has no tenth to warm up for
            instead = (
                f"warming up for {plural(fitted, 'step')} (a tenth of the run)" if fitted else "no warmup"
            )
            warnings.append(
                f"--warmup-steps {warmup:,} is not shorter than the run ({plural(steps, 'step')}), so "
                f"the learning rate would never reach its peak: {instead} instead; give "
                "--warmup-steps below --steps to choose"
            )
            optim = dataclasses.replace(config.optim, warmup_steps=fitted)
            config = dataclasses.replace(config, optim=optim)
    block, stride = config.model.block_size, config.window_stride
    if config.data.sampling == "sliding" and stride > block:
        skipped = stride - block
        warnings.append(
            f"--stride {stride} is larger than --block-size {block}: {skipped} of every {stride} "
            f"tokens ({skipped / stride:.0%}) are never trained on; leave --stride out (half the "
            "block size) or give one up to the block size"
        )
    return config, warnings
