"""No recompilation after the first step: 5 compiled training steps of each recipe, with
evaluations and text samples in between, under ``error_on_recompile`` (issue 22, section 2).

The CPU compiles with the ``aot_eager`` backend (``LMFORGE_COMPILE_BACKEND``): the same graph
capture, guards and recompilations as Inductor, without building kernels.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from lmforge import TrainingManager
from lmforge.observe.reporting import Reporter


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["gpt2", "modern"])
def test_five_compiled_steps_with_evaluations_and_samples_do_not_recompile(
    recipe, train_workspace, tiny_train_config, monkeypatch
):
    monkeypatch.setenv("LMFORGE_COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    samples: list[str] = []

    class Collect(Reporter):
        def sample(self, step, prompt, text):
            samples.append(text)

    config = tiny_train_config(
        steps=5, eval_interval=2, compile="on", recipe=recipe, dropout=0.1, run=f"nore-{recipe}"
    )
    m = TrainingManager(config, train_workspace, reporter=Collect())
    with torch._dynamo.config.patch(error_on_recompile=True):
        result = m.train()  # a recompilation raises torch._dynamo.exc.RecompileError
    assert result.step == 5 and m.compiled and m.compile_reason == "--compile on"
    assert len(samples) == 3  # after the evaluations at steps 2, 4 and the final one
    assert m.stepper.train_model is not m.model  # still the compiled module (no eager fallback)
