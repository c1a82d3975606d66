"""Multi-process training on the CPU (gloo): DDP and FSDP2 against one process, a stop signal
on one rank, checkpoints across world sizes, and the padded vocabulary.

The 2-process runs are real processes: ``lmforge train --nproc 2`` (which runs torchrun), or
two ``python -m lmforge train`` started here with the variables torchrun would set, so that
each rank's exit code can be checked. One thread per process: the suite runs on 2 cores.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed

from lmforge import TrainingManager
from lmforge.checkpoint.listing import list_checkpoints
from lmforge.checkpoint.store import load_model, load_trainer_state, save_checkpoint
from lmforge.config import ModelConfig, TrainingConfig
from lmforge.model.gpt import GPT
from lmforge.observe.reporting import Reporter
from lmforge.train.run_spec import resume_config

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)

REPO = Path(__file__).resolve().parents[1]
# per-rank batch 2 with 2 processes = one process with batch 4; accumulation exercises no_sync
RUN = {"steps": 6, "eval_interval": 3, "grad_accum": 2, "batch_size": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


def _spawn_ranks(workspace: Path, args: list[str], nproc: int = 2) -> list[subprocess.Popen]:
    """``nproc`` ranks of ``lmforge train ARGS``, set up as torchrun would (env://, loopback)."""
    port = str(_free_port())
    procs = []
    for rank in range(nproc):
        env = _env(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(nproc),
            LOCAL_WORLD_SIZE=str(nproc),
        )
        cmd = [sys.executable, "-m", "lmforge", "--workspace", str(workspace), "train", *args]
        procs.append(
            subprocess.Popen(
                cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float = 120) -> list[tuple[int, str, str]]:
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            out.append((p.returncode, stdout, stderr))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return out


def _records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


_REFERENCES: dict[tuple, Path] = {}


def _reference(workspace: Path, tiny_train_config, **changes) -> Path:
    """The same run in this process, with the global batch in one process (made once per module)."""
    settings = {**RUN, "batch_size": 2 * RUN["batch_size"], **changes}
    key = tuple(sorted(settings.items()))
    if key not in _REFERENCES:
        config = tiny_train_config(run="ref", **settings)
        TrainingManager(config, workspace, reporter=Reporter()).train()
        _REFERENCES[key] = workspace / "runs" / "ref"
    return _REFERENCES[key]


def _assert_same_losses(run: Path, ref: Path, tol: float = 1e-4) -> None:
    a, b = _records(run, "train"), _records(ref, "train")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=tol), x["step"]
        assert x["tokens"] == y["tokens"]
    va, vb = _records(run, "eval"), _records(ref, "eval")
    assert [r["step"] for r in va] == [r["step"] for r in vb]
    for x, y in zip(va, vb, strict=True):
        assert x["val_loss"] == pytest.approx(y["val_loss"], abs=tol)


def _resume_in_one_process(workspace: Path, run: str, steps: int) -> None:
    config = resume_config(workspace / "runs" / run, {("train", "steps"): steps})
    result = TrainingManager(config, workspace, reporter=Reporter(), resume=run).train()
    assert result.status == "finished" and result.step == steps
    assert load_trainer_state(workspace / "runs" / run / "checkpoints" / f"step-{steps}")["world_size"] == 1


# ----------------------------------------------------------------------------- 2 processes


def test_ddp_with_nproc_matches_one_process_with_twice_the_batch(
    train_workspace, train_flags, tiny_train_config
):
    flags = train_flags(**RUN)
    cmd = [sys.executable, "-m", "lmforge", "--workspace", str(train_workspace), "train", *flags]
    out = subprocess.run(
        [*cmd, "--run", "ddp", "--nproc", "2", "--json"],
        env=_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)  # rank 0 alone printed
    assert summary["status"] == "finished" and summary["step"] == 6
    assert out.stderr.count("start run ddp") == 1  # ... and reported

    run = train_workspace / "runs" / "ddp"
    ref = _reference(train_workspace, tiny_train_config)
    _assert_same_losses(run, ref)
    assert _records(run, "train")[-1]["tokens"] == 6 * 2 * 2 * 2 * 32  # steps x ranks x B x accum x T

    # one full checkpoint with both ranks' RNG states; the weights are the plain model's
    state = load_trainer_state(run / "checkpoints" / "step-6")
    assert state["world_size"] == 2 and len(state["rng_per_rank"]) == 2
    assert not torch.equal(state["rng_per_rank"][0]["torch"], state["rng_per_rank"][1]["torch"])
    model, config, _ = load_model(run / "checkpoints" / "step-6")  # one process, no torch.distributed
    from lmforge.data.store import open_dataset
    from lmforge.eval.evaluate import evaluate_tokens
    from lmforge.eval.options import EvalOptions
    from lmforge.workspace import Workspace

    val = evaluate_tokens(
        model,
        open_dataset(Workspace.resolve(train_workspace), "wikitext-2").tokens("validation"),
        EvalOptions(block_size=32, stride=32, batch_size=4, max_tokens=config.train.eval_tokens),
    )
    assert val.loss == pytest.approx(_records(run, "eval")[-1]["val_loss"], abs=1e-5)

    # a 2-process checkpoint resumes in one process (its data position converted)
    _resume_in_one_process(train_workspace, "ddp", steps=8)
    assert [r["step"] for r in _records(run, "train")][-2:] == [7, 8]


def test_fsdp_sigterm_on_one_rank_then_exact_resume_under_ddp(
    train_workspace, train_flags, tiny_train_config
):
    """FSDP matches one process; SIGTERM to rank 1 makes both ranks save one full checkpoint
    (gathered from the shards) and exit 143; DDP resumes it exactly where it stopped."""
    steps = 16
    settings = {**RUN, "steps": steps, "eval_interval": 2, "full_interval": 0}
    flags = train_flags(**settings)
    procs = _spawn_ranks(train_workspace, [*flags, "--run", "sig", "--strategy", "fsdp"])
    metrics = train_workspace / "runs" / "sig" / "metrics.jsonl"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not (metrics.exists() and '"train"' in metrics.read_text()):
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.01)
    procs[1].send_signal(signal.SIGTERM)  # rank 1 only
    results = _wait(procs)
    assert [rc for rc, _, _ in results] == [143, 143], results[0][2][-3000:] + results[1][2][-3000:]
    assert results[1][1] == ""  # rank 1 prints nothing
    assert "SIGTERM received (by a rank)" in results[0][2]
    run = train_workspace / "runs" / "sig"
    fulls = [c for c in list_checkpoints(run) if c.kind == "full"]
    assert len(fulls) == 1 and 2 <= fulls[0].step < steps
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    ref = _reference(train_workspace, tiny_train_config, steps=steps, eval_interval=2)
    stopped = _records(run, "train")
    assert len(stopped) == fulls[0].step
    for x, y in zip(stopped, _records(ref, "train"), strict=False):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-4)
    # the gathered weights are the plain model's: one process loads them
    model, _, _ = load_model(fulls[0].path)
    assert model.get_num_params() == GPT(model.config).get_num_params()

    # resumed by 2 DDP processes, the run ends exactly as one that was never stopped
    results = _wait(_spawn_ranks(train_workspace, ["--resume", "sig", "--strategy", "ddp"]))
    assert [rc for rc, _, _ in results] == [0, 0], results[0][2][-3000:]
    _assert_same_losses(run, ref)
    assert [r["step"] for r in _records(run, "train")] == list(range(1, steps + 1))


# ----------------------------------------------------------------------------- in one process


def test_a_rank_leaves_with_its_code_and_its_output_flushed():
    """``leave_rank`` skips the exit-time teardown (FSDP's gloo group can abort there, turning a
    clean 143 into -6) but not what the rank printed: buffered output still reaches the pipe."""
    code = "from lmforge.distributed import leave_rank; print('saved', end=''); leave_rank(143)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert (proc.returncode, proc.stdout) == (143, "saved"), proc.stderr


def test_nproc_is_refused_under_torchrun(cli, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = cli("train", "--nproc", "2", "--dry-run")
    assert result.exit_code == 2 and "--nproc cannot be used under torchrun" in result.stderr


def test_dry_run_counts_tokens_of_all_processes(cli):
    one = json.loads(cli("train", "--preset", "gpt2", "--dry-run", "--json").stdout)
    four = json.loads(cli("train", "--preset", "gpt2", "--dry-run", "--json", "--nproc", "4").stdout)
    assert four["tokens_per_step"] == 4 * one["tokens_per_step"]
    assert four["parameters"]["total"] == 124_439_808  # GPT-2 small: the real vocabulary counted


def test_launcher_command_line():
    from lmforge.cli.train import _without_nproc
    from lmforge.launch import torchrun_command

    assert _without_nproc(["train", "--nproc", "2", "--run", "x", "--nproc=3"]) == ["train", "--run", "x"]
    cmd = torchrun_command(2, ["train", "--run", "x"])
    assert "run_torchrun" in cmd[3] and "--nproc-per-node" in cmd
    # "--" keeps torchrun from reading --run as its own --run-path
    assert cmd[-9:] == ["--", sys.executable, "-P", "-u", "-m", "lmforge", "train", "--run", "x"]


def test_rank_rng_states():
    from lmforge.train.rng import derive_seed, rank_rng_state

    states = [{"r": 0}, {"r": 1}]
    assert rank_rng_state(states, 1) == {"r": 1}
    assert rank_rng_state(states, 2) is None  # more processes than saved: reseeded
    assert derive_seed(1, 5, 0) != derive_seed(1, 5, 1) and derive_seed(1, 5, 1) == derive_seed(1, 5, 1)


# ----------------------------------------------------------------------------- padded vocabulary


def _tiny(pad: int) -> ModelConfig:
    return ModelConfig(vocab_size=257, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0,
                       pad_vocab_multiple=pad)  # fmt: skip


def test_padded_vocabulary_gives_the_same_model():
    from lmforge.checkpoint.store import load_weights, model_state

    torch.manual_seed(0)
    plain = GPT(_tiny(1))
    padded = GPT(_tiny(64))
    assert padded.transformer.wte.weight.shape == (320, 16)
    assert padded.lm_head.weight is padded.transformer.wte.weight
    assert not padded.transformer.wte.weight[257:].any()  # padded rows start at 0
    assert padded.get_num_params() == plain.get_num_params()
    assert padded.get_num_params(non_embedding=False) == plain.get_num_params(non_embedding=False)
    load_weights(padded, model_state(plain))  # the same weights, padded with zero rows
    assert torch.equal(padded.transformer.wte.weight[:257], plain.transformer.wte.weight)

    x = torch.randint(0, 257, (2, 16))
    (logits_a, _), (_, loss_a) = plain(x), plain(x, x)
    (logits_b, _), (_, loss_b) = padded(x), padded(x, x)
    # no targets: contiguous logits over the real vocabulary
    assert logits_b.shape == (2, 16, 257) and logits_b.is_contiguous()
    torch.testing.assert_close(logits_b, logits_a, rtol=0, atol=1e-6)
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=1e-6)
    cache = padded.new_kv_cache(2)
    last, _ = padded(x, kv_cache=cache)
    assert last.shape == (2, 1, 257)
    torch.testing.assert_close(last[:, 0], logits_a[:, -1], rtol=0, atol=1e-5)

    # gradients reach only the real rows
    loss_b.backward()
    assert not padded.transformer.wte.weight.grad[257:].any()


def test_padded_checkpoint_stores_the_real_vocabulary(tmp_path):
    torch.manual_seed(0)
    model = GPT(_tiny(64))
    config = TrainingConfig(preset="tiny", run="r", tokenizer="bytes", model=_tiny(64))
    path = save_checkpoint(
        tmp_path / "c", model, {"kind": "light", "run": "r", "step": 0, "config": config.to_dict()}
    )
    from safetensors.torch import load_file

    assert load_file(str(path / "model.safetensors"))["transformer.wte.weight"].shape == (257, 16)
    loaded, _, _ = load_model(path)
    assert loaded.transformer.wte.weight.shape == (320, 16)
    x = torch.randint(0, 257, (1, 16))
    model.eval()
    torch.testing.assert_close(loaded(x)[0], model(x)[0], rtol=0, atol=0)


def test_trainer_pads_the_vocabulary_on_cuda_only(train_workspace, tiny_train_config):
    manager = TrainingManager(tiny_train_config(run="cpu"), train_workspace, reporter=Reporter())
    assert manager.config.model.pad_vocab_multiple == 1  # the CPU path is unchanged
    assert manager.model.transformer.wte.weight.size(0) == 257
