"""Checkpoint integrity (issue 13, item 20): a SHA-256 per file in ``meta.json`` at save time,
checked on load (``LMFORGE_SKIP_CHECKSUMS=1`` skips it), non-finite weights refused, and
checkpoints from before the checksums still loading."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from lmforge.checkpoint import store as ckpt
from lmforge.errors import CheckpointError


def _flip_bytes(path, count=2000):
    data = bytearray(path.read_bytes())
    start = len(data) // 2
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0x01  # low bits: the values change but stay finite
    path.write_bytes(bytes(data))


def test_meta_records_a_sha256_per_file(make_ckpt_run):
    path = make_ckpt_run("r", [(10, "full")]) / "checkpoints" / "step-10"
    meta = json.loads((path / "meta.json").read_text())
    assert sorted(meta["sha256"]) == ["model.safetensors", "trainer.pt"] == sorted(meta["files"])
    for name, digest in meta["sha256"].items():
        assert digest == hashlib.sha256((path / name).read_bytes()).hexdigest()


def test_flipped_bytes_are_refused_and_can_be_let_through(make_ckpt_run, monkeypatch):
    path = make_ckpt_run("r", [(10, "full")]) / "checkpoints" / "step-10"
    _flip_bytes(path / "model.safetensors")  # same size: the size check alone let this through
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt: its SHA-256 differs") as info:
        ckpt.load_model(path)
    assert "LMFORGE_SKIP_CHECKSUMS=1" in info.value.hint
    assert ckpt.load_state_dict(path, verify=False)  # the caller's choice
    monkeypatch.setenv(ckpt.SKIP_CHECKSUMS_ENV, "1")
    assert ckpt.load_state_dict(path)

    monkeypatch.delenv(ckpt.SKIP_CHECKSUMS_ENV)
    _flip_bytes(path / "trainer.pt", 50)
    with pytest.raises(CheckpointError, match="trainer.pt is corrupt"):
        ckpt.load_trainer_state(path)


def test_a_checkpoint_without_checksums_still_loads(make_ckpt_run):
    path = make_ckpt_run("r", [(10, "full")]) / "checkpoints" / "step-10"
    meta = json.loads((path / "meta.json").read_text())
    del meta["sha256"]  # as written before the checksums
    (path / "meta.json").write_text(json.dumps(meta))
    model, _, _ = ckpt.load_model(path)
    assert ckpt.load_trainer_state(path)["step"] == 10
    assert model.lm_head.weight is model.transformer.wte.weight


def test_non_finite_weights_are_refused_with_one_line(make_ckpt_run, cli):
    from safetensors.torch import load_file, save_file

    path = make_ckpt_run("r", [(10, "light")]) / "checkpoints" / "step-10"
    state = load_file(str(path / "model.safetensors"))
    key = next(k for k in state if k.endswith("attn.c_attn.weight"))
    state[key][0, 0] = float("nan")
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    meta = json.loads((path / "meta.json").read_text())
    meta.update(ckpt.file_records(path))  # consistent sizes and digests: only the values are bad
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"non-finite weights .* in {key}"):
        ckpt.load_state_dict(path)
    r = cli("eval", "r:step-10")
    assert r.exit_code == 1 and "non-finite weights" in r.stderr and "Traceback" not in r.output
    assert len([line for line in r.stderr.splitlines() if line.startswith("Error:")]) == 1


def test_an_export_records_the_digest_of_its_own_weights(make_ckpt_run, tmp_path):
    from lmforge.interop.hf_export import export_checkpoint

    path = make_ckpt_run("r", [(10, "full")]) / "checkpoints" / "step-10"
    out = tmp_path / "exported"
    export_checkpoint(path, out, "safetensors")
    meta = json.loads((out / "meta.json").read_text())
    assert sorted(meta["sha256"]) == ["model.safetensors"]
    assert ckpt.load_state_dict(out).keys() == ckpt.load_state_dict(path).keys()


def test_torch_force_no_weights_only_load_does_not_open_the_door(make_ckpt_run, tmp_path, monkeypatch):
    """``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` turns off torch's default safety; lmforge passes
    ``weights_only=True`` itself, so an evil ``trainer.pt`` is still refused."""

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(tmp_path / 'pwned')!r}, 'w').write('x')",))

    path = make_ckpt_run("r", [(10, "full")]) / "checkpoints" / "step-10"
    torch.save({"step": 10, "x": Payload()}, path / "trainer.pt")
    meta = json.loads((path / "meta.json").read_text())
    meta.update(ckpt.file_records(path))  # a tamperer rewrites the sizes and digests too
    (path / "meta.json").write_text(json.dumps(meta))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match="refusing to load"):
        ckpt.load_trainer_state(path)
    assert not (tmp_path / "pwned").exists()
