"""The training loop on a tiny model (CPU, byte tokenizer, generated corpus)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from resume_helpers import StopAtStep

from lmforge import TrainingConfig, TrainingManager
from lmforge.checkpoint.listing import list_checkpoints
from lmforge.checkpoint.store import load_trainer_state, read_meta, save_checkpoint
from lmforge.errors import ConfigError, DataError, LmforgeError, NotFoundError, UsageError
from lmforge.observe.reporting import Reporter


def _records(run_dir, kind):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def _nan_after(model, calls: set[int]):
    """Make the loss of the training forward passes numbered in ``calls`` (1-based) NaN."""
    count = {"n": 0}

    def hook(module, args, output):
        if not module.training:
            return None  # evaluation (the batch before the first step, say)
        count["n"] += 1
        if count["n"] in calls:
            logits, loss = output
            return logits, loss * float("nan")
        return None

    return model.register_forward_hook(hook)


def test_loss_falls_and_the_run_directory_is_complete(train_workspace, tiny_train_config):
    config = tiny_train_config(steps=50, eval_interval=25, run="falls", log_interval=5)
    result = TrainingManager(config, train_workspace, reporter=Reporter()).train()
    run_dir = train_workspace / "runs" / "falls"
    assert result.status == "finished" and result.step == 50 and result.exit_code == 0

    train = _records(run_dir, "train")
    assert [r["step"] for r in train] == [1, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    assert set(train[0]) == {
        "kind",
        "step",
        "loss",
        "lr",
        "grad_norm",
        "tokens_per_sec",
        "mfu",
        "tokens",
        "time",
    }
    assert train[-1]["loss"] < train[0]["loss"] - 1.5  # from ~ln(257) = 5.5 to well below 4
    assert train[-1]["tokens"] == 50 * 4 * 32
    evals = _records(run_dir, "eval")
    assert [e["step"] for e in evals] == [25, 50]
    assert evals[-1]["val_ppl"] == pytest.approx(math.exp(evals[-1]["val_loss"]))

    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "finished" and run["step"] == 50 and run["total_steps"] == 50
    assert run["tokenizer"]["name"] == "bytes" and run["dataset"] == "wikitext-2"
    assert run["best_val_loss"] == pytest.approx(min(e["val_loss"] for e in evals))
    assert {
        "started_at",
        "ended_at",
        "tokens",
        "best_step",
        "wandb_id",
        "pid",
        "lmforge_version",
        "error",
    } <= set(run)

    saved = TrainingConfig.from_toml(run_dir / "config.toml")
    assert saved.model.vocab_size == 257  # from the dataset's tokenizer
    assert saved.run == "falls" and saved.train.steps == 50

    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [25, 50] and samples[0]["prompt"] == config.logging.sample_prompt

    kinds = {c.name: c.kind for c in list_checkpoints(run_dir)}
    assert kinds == {"best": "best", "step-50": "full"}
    meta = read_meta(run_dir / "checkpoints" / "step-50")
    assert meta["tokenizer"]["name"] == "bytes" and meta["config"]["run"] == "falls"
    state = load_trainer_state(run_dir / "checkpoints" / "step-50")
    assert set(state) == {  # trainer.pt's keys: older checkpoints must keep loading
        "optimizer",
        "scaler",
        "step",
        "tokens",
        "schedule",
        "rng",
        "rng_per_rank",
        "loader",
        "wandb_id",
        "tokenizer",
        "best_val_loss",
        "best_step",
        "last_val_loss",
        "last_eval_step",
        "evals_since_best",
        "bad_steps",
        "world_size",
    }
    assert set(state["bad_steps"]) == {"consecutive", "total", "rollbacks"}
    assert state["step"] == 50 and state["loader"]["batch"] > 0 and state["wandb_id"] == run["wandb_id"]


def test_checkpoint_intervals_and_keep_last(train_workspace, tiny_train_config):
    config = tiny_train_config(
        steps=12, light_interval=2, full_interval=5, keep_last=2, eval_interval=100, sample_tokens=0, run="ck"
    )
    TrainingManager(config, train_workspace, reporter=Reporter()).train()
    cps = {c.name: c.kind for c in list_checkpoints(train_workspace / "runs" / "ck")}
    # saves at 2, 4, 5 (full), 6, 8, 10 (full) and 12 (end, full): the newest two are kept
    assert cps == {"step-10": "full", "step-12": "full", "best": "best"}


def test_accumulation_equals_one_big_batch(train_workspace, tiny_train_config):
    big = TrainingManager(tiny_train_config(batch_size=4, grad_accum=1), train_workspace, reporter=Reporter())
    small = TrainingManager(
        tiny_train_config(batch_size=2, grad_accum=2), train_workspace, reporter=Reporter()
    )
    for a, b in zip(big.model.parameters(), small.model.parameters(), strict=True):
        assert torch.equal(a, b)  # same seed, same init
    x, y = next(big.loader)
    out_big = big.train_step([(x, y)], lr=1e-2)
    out_small = small.train_step([(x[:2], y[:2]), (x[2:], y[2:])], lr=1e-2)
    assert out_big.loss.item() == pytest.approx(out_small.loss.item(), abs=1e-6)
    assert out_big.grad_norm.item() == pytest.approx(out_small.grad_norm.item(), rel=1e-5)
    for a, b in zip(big.model.parameters(), small.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_non_finite_step_updates_nothing(train_workspace, tiny_train_config):
    m = TrainingManager(tiny_train_config(), train_workspace, reporter=Reporter())
    m.train_step(m.next_batches(), lr=1e-3)  # one good step: the optimizer has state
    params = [p.detach().clone() for p in m.model.parameters()]
    opt_state = {k: {n: t.clone() for n, t in v.items()} for k, v in m.optimizer.state.items()}
    handle = _nan_after(m.model, {1})
    out = m.train_step(m.next_batches(), lr=1e-3)
    handle.remove()
    assert out.status == "bad"
    for before, p in zip(params, m.model.parameters(), strict=True):
        assert torch.equal(before, p)
    for k, v in m.optimizer.state.items():
        for n, t in v.items():
            assert torch.equal(opt_state[k][n], t)
    assert all(p.grad is None for p in m.model.parameters())


def test_bad_step_is_logged_and_skipped_in_the_loop(train_workspace, tiny_train_config):
    warnings = []

    class Collect(Reporter):
        def warning(self, message):
            warnings.append(message)

    m = TrainingManager(
        tiny_train_config(steps=6, eval_interval=100, run="nan"), train_workspace, reporter=Collect()
    )
    _nan_after(m.model, {3})
    result = m.train()
    run_dir = train_workspace / "runs" / "nan"
    bad = _records(run_dir, "bad_step")
    assert len(bad) == 1 and bad[0]["step"] == 3 and bad[0]["loss"] is None and bad[0]["consecutive"] == 1
    # the step counter did not move: six good steps still make steps 1..6
    assert [r["step"] for r in _records(run_dir, "train")] == [1, 2, 3, 4, 5, 6]
    assert result.step == 6 and result.bad_steps == 1
    assert any("non-finite" in w and "skipped" in w for w in warnings)


def test_rollback_to_the_last_full_checkpoint(train_workspace, tiny_train_config):
    config = tiny_train_config(steps=8, full_interval=4, max_bad_steps=2, eval_interval=100, run="rb")
    m = TrainingManager(config, train_workspace, reporter=Reporter())
    _nan_after(m.model, {6, 7})  # the attempts at step 6, twice
    result = m.train()
    run_dir = train_workspace / "runs" / "rb"
    (rollback,) = _records(run_dir, "rollback")
    assert rollback["step"] == 4 and rollback["from_step"] == 5
    assert result.status == "finished" and result.step == 8 and result.bad_steps == 2


def test_divergence_without_a_checkpoint_stops(train_workspace, tiny_train_config):
    config = tiny_train_config(steps=8, full_interval=0, max_bad_steps=2, run="div")
    m = TrainingManager(config, train_workspace, reporter=Reporter())
    _nan_after(m.model, set(range(1, 100)))
    with pytest.raises(LmforgeError, match="diverged.*no full checkpoint"):
        m.train()
    run = json.loads((train_workspace / "runs" / "div" / "run.json").read_text())
    assert run["status"] == "failed" and "diverged" in run["error"]


def test_resume_gives_exactly_the_uninterrupted_losses(train_workspace, tiny_train_config):
    def config(run):
        return tiny_train_config(steps=16, dropout=0.1, eval_interval=6, sample_tokens=0, run=run)

    TrainingManager(config("straight"), train_workspace, reporter=Reporter()).train()

    stopper = StopAtStep(7)
    first = TrainingManager(config("halves"), train_workspace, reporter=stopper)
    stopper.manager = first
    interrupted = first.train()
    assert interrupted.status == "interrupted" and interrupted.step == 7 and interrupted.exit_code == 130
    assert read_meta(train_workspace / "runs" / "halves" / "checkpoints" / "step-7")["kind"] == "full"

    resumed = TrainingManager(None, train_workspace, resume="halves", reporter=Reporter())
    assert resumed.config.model.dropout == 0.1
    result = resumed.train()
    assert result.status == "finished" and result.step == 16

    def curve(run, kind, key):
        return [(r["step"], r[key]) for r in _records(train_workspace / "runs" / run, kind)]

    assert curve("halves", "train", "loss") == curve("straight", "train", "loss")  # bitwise equal
    assert curve("halves", "eval", "val_loss") == curve("straight", "eval", "val_loss")
    run = json.loads((train_workspace / "runs" / "halves" / "run.json").read_text())
    assert run["status"] == "finished"


def test_wandb_offline_writes_into_the_run_directory(train_workspace, tiny_train_config, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    config = tiny_train_config(steps=2, eval_interval=2, wandb="offline", run="wb")
    TrainingManager(config, train_workspace, reporter=Reporter()).train()
    run_dir = train_workspace / "runs" / "wb"
    wandb_id = json.loads((run_dir / "run.json").read_text())["wandb_id"]
    offline = list((run_dir / "wandb").glob(f"offline-run-*-{wandb_id}"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))


# ----------------------------------------------------------------------------- bad input


def test_unknown_dataset(train_workspace, tiny_train_config):
    with pytest.raises(NotFoundError, match="nope"):
        TrainingManager(tiny_train_config(name="nope"), train_workspace)


def test_missing_validation_split(train_workspace, tiny_train_config, tmp_path):
    from data_fixtures import write_wikitext

    from lmforge.data.prepare import prepare_dataset
    from lmforge.workspace import Workspace

    write_wikitext(tmp_path / "src")
    prepare_dataset(
        Workspace.resolve(train_workspace),
        "wikitext-2",
        source=tmp_path / "src",
        tokenizer="bytes",
        splits="train",
        alias="trainonly",
    )
    with pytest.raises(UsageError, match="no 'validation' split"):
        TrainingManager(tiny_train_config(name="trainonly"), train_workspace)


def test_block_size_larger_than_the_split(train_workspace, tiny_train_config):
    with pytest.raises(DataError, match="block_size"):
        TrainingManager(tiny_train_config(block_size=200_000), train_workspace)


def test_vocab_smaller_than_the_data(train_workspace, tiny_train_config):
    with pytest.raises(UsageError, match="smaller than the 257"):
        TrainingManager(tiny_train_config(vocab_size=100), train_workspace)


def test_existing_run_is_not_overwritten(train_workspace, tiny_train_config):
    run_dir = train_workspace / "runs" / "taken"
    run_dir.mkdir(parents=True)
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="already exists") as info:
        TrainingManager(tiny_train_config(run="taken"), train_workspace)
    assert "--resume taken" in info.value.hint
    assert [p.name for p in run_dir.iterdir()] == ["notes.txt"]


def test_resume_refuses_another_architecture(train_workspace, tiny_train_config):
    TrainingManager(
        tiny_train_config(steps=2, run="arch", sample_tokens=0), train_workspace, reporter=Reporter()
    ).train()
    changed = tiny_train_config(steps=4, n_layer=3)
    with pytest.raises(UsageError, match="n_layer: 2 -> 3"):
        TrainingManager(changed, train_workspace, resume="arch")


def test_init_from_refuses_another_tokenizer(train_workspace, tiny_train_config):
    from lmforge.model.gpt import GPT

    config = tiny_train_config(vocab_size=300)
    model = GPT(config.model)
    path = train_workspace / "elsewhere" / "ckpt"
    meta = {
        "kind": "light",
        "run": "x",
        "step": 1,
        "tokens": 1,
        "val_loss": None,
        "config": config.to_dict(),
        "tokenizer": {"name": "other", "sha256": "0" * 64},
        "dataset": "x",
    }
    save_checkpoint(path, model, meta)
    with pytest.raises(UsageError, match="tokenizer mismatch"):
        TrainingManager(tiny_train_config(), train_workspace, init_from=path)


def test_init_from_takes_weights_and_architecture(train_workspace, tiny_train_config):
    TrainingManager(
        tiny_train_config(steps=3, run="base", sample_tokens=0), train_workspace, reporter=Reporter()
    ).train()
    ckpt_dir = train_workspace / "runs" / "base" / "checkpoints" / "step-3"
    m = TrainingManager(
        tiny_train_config(n_layer=4), train_workspace, init_from=ckpt_dir, reporter=Reporter()
    )
    assert m.config.model.n_layer == 2
    from safetensors.torch import load_file

    saved = load_file(str(ckpt_dir / "model.safetensors"))
    assert torch.equal(m.model.transformer.wte.weight, saved["transformer.wte.weight"])
    assert m.step == 0


def test_generate_sample(train_workspace, tiny_train_config):
    m = TrainingManager(tiny_train_config(), train_workspace, reporter=Reporter())
    text = m.generate_sample("The ", max_tokens=5, seed=0)
    assert isinstance(text, str) and text == m.generate_sample("The ", max_tokens=5, seed=0)


def test_lazy_exports():
    import lmforge

    assert lmforge.TrainingManager is TrainingManager
    with pytest.raises(AttributeError):
        lmforge.NoSuchThing  # noqa: B018


def test_config_error_types():
    assert issubclass(ConfigError, UsageError)


def test_early_stopping_after_patience(train_workspace, tiny_train_config):
    config = tiny_train_config(steps=20, eval_interval=2, patience=2, sample_tokens=0, run="early")
    m = TrainingManager(config, train_workspace, reporter=Reporter())
    m.evaluate = iter([3.0, 3.1, 3.2, 2.0]).__next__  # no improvement after the first evaluation
    result = m.train()
    assert result.stop_reason == "early_stopping" and result.step == 6 and result.status == "finished"
    assert result.best_val_loss == 3.0 and result.best_step == 2
    assert read_meta(train_workspace / "runs" / "early" / "checkpoints" / "best")["step"] == 2


@pytest.mark.parametrize("eval_interval", [4, 3])  # the last step's evaluation, or the final one
def test_a_signal_during_the_final_evaluation_leaves_the_run_finished(
    train_workspace, tiny_train_config, eval_interval
):
    import signal

    config = tiny_train_config(
        steps=4, eval_interval=eval_interval, sample_tokens=0, run=f"late{eval_interval}"
    )
    m = TrainingManager(config, train_workspace, reporter=Reporter())
    real = m.evaluate

    def evaluate():
        if m.step == 4:
            m.request_stop(signal.SIGTERM)  # as the handler does when SIGTERM arrives
        return real()

    m.evaluate = evaluate
    result = m.train()
    assert (result.status, result.stop_reason, result.step, result.exit_code) == ("finished", "steps", 4, 0)
    run = json.loads((train_workspace / "runs" / f"late{eval_interval}" / "run.json").read_text())
    assert run["status"] == "finished" and run["step"] == 4


class _Recording:
    """A loader that records each batch it hands out in ``events``."""

    def __init__(self, loader, events):
        self.loader, self.events = loader, events

    def __next__(self):
        self.events.append("fetch")
        return next(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)


def test_the_next_steps_batches_are_fetched_before_the_host_sync(
    train_workspace, tiny_train_config, monkeypatch
):
    """The GPU does not idle at a step boundary while the host reads data: the next step's
    micro-batches are fetched (and their copies started) before the step's one host sync; the
    batches reach the model contiguous (pin_memory would copy a view to pageable memory first)."""
    import lmforge.train.step as step_module

    events: list[str] = []
    sync = step_module.host_sync
    monkeypatch.setattr(step_module, "host_sync", lambda flags: events.append("sync") or sync(flags))
    config = tiny_train_config(steps=3, grad_accum=2, eval_interval=3, sample_tokens=0, run="ahead")
    m = TrainingManager(config, train_workspace, reporter=Reporter())
    m.batches.loader = _Recording(m.loader, events)
    contiguous: list[bool] = []
    m.model.register_forward_pre_hook(
        lambda module, args: contiguous.extend(t.is_contiguous() for t in args) if module.training else None
    )
    m.train()
    fetch2 = ["fetch", "fetch"]
    # step 1: its own batches, then step 2's before the sync; step 3 (the last) fetches nothing
    assert events == fetch2 + fetch2 + ["sync"] + fetch2 + ["sync", "sync"]
    assert len(contiguous) == 12 and all(contiguous)  # 3 steps x 2 micro-batches x (x, y)


def test_a_checkpoint_saves_the_data_position_of_the_step_taken(train_workspace, tiny_train_config):
    """With the next step's batches fetched, a full checkpoint still points at them (not past)."""
    config = tiny_train_config(steps=4, full_interval=2, eval_interval=4, sample_tokens=0, run="pos")
    m = TrainingManager(config, train_workspace, reporter=Reporter())
    m.train()
    saved = load_trainer_state(train_workspace / "runs" / "pos" / "checkpoints" / "step-2")
    assert saved["loader"]["batch"] == 2 and saved["step"] == 2


def test_one_evaluation_batch_runs_after_the_first_step_and_changes_no_loss(
    train_workspace, tiny_train_config, monkeypatch
):
    """Evaluation's memory is tried beside the optimizer state after the first step (a misfit
    fails in the first seconds, not at the first evaluation), and the probe draws no random
    numbers: the losses (with dropout) are bitwise those of a run without it."""
    from lmforge.train.evaluation import Evaluation

    def run(name):
        config = tiny_train_config(
            steps=4, dropout=0.1, eval_interval=2, grad_accum=2, sample_tokens=0, run=name
        )
        m = TrainingManager(config, train_workspace, reporter=Reporter())
        modes: list[tuple[bool, int]] = []
        m.model.register_forward_pre_hook(lambda module, args: modes.append((module.training, len(args[0]))))
        m.train()
        return modes, [r["loss"] for r in _records(train_workspace / "runs" / name, "train")]

    modes, losses = run("probed")
    batch = tiny_train_config().train.batch_size
    # step 1 (2 micro-batches), one evaluation batch, step 2
    assert [m[0] for m in modes[:4]] == [True, True, False, True] and modes[2][1] == batch
    monkeypatch.setattr(Evaluation, "probe", lambda self: None)
    _, unprobed = run("unprobed")
    assert losses == unprobed and len(losses) == 4


def test_an_evaluation_that_cannot_fit_fails_after_the_first_step(
    train_workspace, tiny_train_config, monkeypatch
):
    import lmforge.eval.evaluate as evaluate

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")

    monkeypatch.setattr(evaluate, "evaluate_tokens", out_of_memory)
    config = tiny_train_config(steps=6, eval_interval=5, run="nofit")
    m = TrainingManager(config, train_workspace, reporter=Reporter())
    with pytest.raises(torch.OutOfMemoryError):
        m.train()
    assert m.step == 1  # not 5


def test_cuda_rng_of_another_gpu_count_is_not_restored_and_says_so(monkeypatch):
    import lmforge.train.rng as rng

    restored: list = []
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    saved = rng.get_rng_state() | {"cuda": [torch.zeros(16, dtype=torch.uint8)] * 2}
    monkeypatch.setattr(rng, "_cuda_devices", lambda: 2)
    assert rng.set_rng_state(saved) is None and len(restored) == 1  # the same count: restored
    monkeypatch.setattr(rng, "_cuda_devices", lambda: 1)
    note = rng.set_rng_state(saved)
    assert "CUDA random state is for 2 GPUs and this process sees 1: not restored" in note
    assert len(restored) == 1
    monkeypatch.setattr(rng, "_cuda_devices", lambda: 0)  # resumed on a CPU: nothing to restore
    assert rng.set_rng_state(saved) is None


def test_resume_on_another_gpu_count_warns_once(train_workspace, tiny_train_config, monkeypatch):
    import lmforge.train.rng as rng
    import lmforge.train.state as state

    fake_cuda = [torch.zeros(16, dtype=torch.uint8)] * 2  # saved on a 2-GPU machine
    monkeypatch.setattr(state, "get_rng_state", lambda: rng.get_rng_state() | {"cuda": fake_cuda})
    config = tiny_train_config(steps=3, eval_interval=2, sample_tokens=0, run="gpus")
    stopper = StopAtStep(2)
    stopper.manager = TrainingManager(config, train_workspace, reporter=stopper)
    assert stopper.manager.train().step == 2

    warnings: list[str] = []

    class Collect(Reporter):
        def warning(self, message):
            warnings.append(message)

    monkeypatch.setattr(rng, "_cuda_devices", lambda: 1)  # resumed where one GPU is seen
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: None)
    resumed = TrainingManager(None, train_workspace, resume="gpus", reporter=Collect())
    assert resumed.train().step == 3
    assert sum("CUDA random state is for 2 GPUs" in w for w in warnings) == 1


def test_a_single_bad_step_allowed_is_one_step_in_the_words():
    from lmforge.train.recovery import Recovery
    from lmforge.train.step import StepOutcome

    nan = torch.tensor(float("nan"))
    decision = Recovery(1).decide(StepOutcome(nan, nan, "bad"), step=4, tokens=0, latest_full=None)
    assert decision.action == "stop" and decision.error.startswith("training diverged: 1 step in a row had")
