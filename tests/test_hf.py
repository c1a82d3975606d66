"""Hugging Face GPT-2 conversion: weights, configs, tokenizer files, export and import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmforge.checkpoint.store import sha256_file
from lmforge.config import ModelConfig
from lmforge.errors import CheckpointError, ConfigError, UsageError
from lmforge.interop import hf_config, hf_export, hf_import, hf_tokenizer, hf_weights
from lmforge.model.gpt import GPT
from lmforge.workspace import Workspace


def tiny(**kw) -> ModelConfig:
    dims = {"vocab_size": 257, "block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 32, "dropout": 0.0}
    return ModelConfig(**(dims | kw))


def random_model(config: ModelConfig, seed: int = 0) -> GPT:
    """A GPT whose every parameter (biases and LayerNorms included) is random, so that a
    parity test sees any transposed or dropped tensor."""
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def state(model: GPT) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}


@pytest.mark.parametrize("bias", [True, False])
def test_param_shapes_match_the_model(bias):
    config = tiny(bias=bias)
    shapes = {k: tuple(v.shape) for k, v in state(GPT(config)).items()}
    assert hf_weights.lmforge_param_shapes(config) == shapes


def test_weights_round_trip_exactly():
    config = tiny()
    sd = state(random_model(config))
    back = hf_weights.from_hf_state_dict(hf_weights.to_hf_state_dict(sd, config), config)
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    # HF stores Conv1D weights transposed
    hf_sd = hf_weights.to_hf_state_dict(sd, config)
    assert hf_sd["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)


def test_hf_keys_without_prefix_and_with_buffers_are_accepted():
    config = tiny()
    hf_sd = hf_weights.to_hf_state_dict(state(random_model(config)), config)
    openai_style = {k.removeprefix("transformer."): v for k, v in hf_sd.items()}
    openai_style["h.0.attn.bias"] = torch.ones(1, 1, 32, 32)
    openai_style["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    sd = hf_weights.from_hf_state_dict(openai_style, config)
    assert set(sd) == set(hf_weights.lmforge_param_shapes(config))


def test_mismatched_weights_are_named():
    config = tiny()
    hf_sd = hf_weights.to_hf_state_dict(state(random_model(config)), config)
    del hf_sd["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(CheckpointError, match="missing transformer.h.1.mlp.c_fc.bias"):
        hf_weights.from_hf_state_dict(hf_sd, config)
    with pytest.raises(CheckpointError, match="shape"):
        hf_weights.from_hf_state_dict(
            hf_weights.to_hf_state_dict(state(random_model(config)), config), tiny(vocab_size=300)
        )
    untied = hf_weights.to_hf_state_dict(state(random_model(config)), config)
    untied["lm_head.weight"] = torch.zeros(257, 32)
    with pytest.raises(CheckpointError, match="untied"):
        hf_weights.from_hf_state_dict(untied, config)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "gpt_neo"}, "model_type"),
        ({"activation_function": "relu"}, "activation_function"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
        ({"tie_word_embeddings": False}, "tie_word_embeddings"),
        ({"n_inner": 100}, "n_inner"),
        ({"n_embd": "wide"}, "n_embd must be an integer"),
    ],
)
def test_unsupported_hf_configs_are_refused(change, message):
    config = hf_config.hf_config(tiny(), eot_token=256) | change
    with pytest.raises(ConfigError, match=message) as info:
        hf_config.model_config_from_hf(config)
    assert info.value.exit_code == 2


def test_hf_config_round_trip_and_presets():
    config = tiny(layer_norm_epsilon=1e-6)
    assert hf_config.model_config_from_hf(hf_config.hf_config(config)) == config
    assert hf_config.preset_for(ModelConfig()) == "gpt2"
    assert hf_config.preset_for(ModelConfig(n_layer=24, n_head=16, n_embd=1024)) == "gpt2-medium"
    assert hf_config.preset_for(tiny()) == "gpt2"  # no preset matches: a label, the dims are in the config


# ----------------------------------------------------------------------------- transformers parity


def _hf_logits(path: Path, idx: torch.Tensor):
    transformers = pytest.importorskip("transformers")
    model, info = transformers.GPT2LMHeadModel.from_pretrained(str(path), output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"))
    model.eval()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied
    with torch.no_grad():
        return model(idx).logits


@pytest.mark.parametrize("bias", [True, False])
def test_export_gives_transformers_the_same_logits(tmp_path, bias):
    pytest.importorskip("transformers")
    config = tiny(bias=bias)
    model = random_model(config)
    hf_export.write_hf_dir(state(model), config, tmp_path, eot_token=256)
    idx = torch.randint(0, 257, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = model(idx)
    theirs = _hf_logits(tmp_path, idx)
    assert (ours - theirs).abs().max().item() < 1e-4


def _save_pretrained(path: Path, seed: int = 0, **kw):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=257, n_positions=32, n_embd=32, n_layer=2, n_head=4, **kw)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    model.save_pretrained(str(path))
    return model


def _write_bytes_tokenizer(path: Path) -> None:
    from lmforge.data.tokenizer import bytes_tokenizer

    for name, text in hf_tokenizer.hf_tokenizer_files(bytes_tokenizer(), 32).items():
        (path / name).write_text(text, encoding="utf-8")


def test_import_save_pretrained_then_export_round_trip(tmp_path):
    from safetensors.torch import load_file

    from lmforge.checkpoint.store import load_model, read_meta

    src = tmp_path / "hf-model"
    theirs = _save_pretrained(src)
    _write_bytes_tokenizer(src)
    ws = Workspace.resolve(tmp_path / "ws")
    result = hf_import.import_checkpoint(ws, src, name="imported")
    assert result.run == "imported" and result.tokenizer["name"] == "bytes"
    meta = read_meta(result.checkpoint)
    assert meta["kind"] == "best" and meta["step"] == 0 and meta["tokenizer"]["name"] == "bytes"
    assert (ws.run_dir("imported") / "run.json").is_file() and (
        ws.run_dir("imported") / "config.toml"
    ).is_file()
    model, config, _ = load_model(result.checkpoint)
    idx = torch.randint(0, 257, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(idx)[0] - theirs(idx).logits).abs().max().item() < 1e-4

    out = tmp_path / "export"
    exported = hf_export.export_checkpoint(result.checkpoint, out, "hf", workspace=ws)
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "lmforge.json"} <= set(
        exported.files
    )
    a, b = load_file(str(src / "model.safetensors")), load_file(str(out / "model.safetensors"))
    a = {k: v for k, v in a.items() if k != "lm_head.weight"}
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
    assert (out / "vocab.json").read_bytes() == (src / "vocab.json").read_bytes()


def test_import_pytorch_model_bin(tmp_path):
    src = tmp_path / "bin-model"
    theirs = _save_pretrained(src, seed=3)
    (src / "model.safetensors").unlink()
    torch.save(theirs.state_dict(), src / "pytorch_model.bin")
    _write_bytes_tokenizer(src)
    ws = Workspace.resolve(tmp_path / "ws")
    result = hf_import.import_checkpoint(ws, src)  # the run is named after the directory
    assert result.run == "bin-model"
    from lmforge.checkpoint.store import load_model

    model, _, _ = load_model(result.checkpoint)
    idx = torch.randint(0, 257, (1, 32), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (model(idx)[0] - theirs(idx).logits).abs().max().item() < 1e-4


def test_import_without_tokenizer_files(tmp_path):
    src = tmp_path / "m"
    _save_pretrained(src)
    ws = Workspace.resolve(tmp_path / "ws")
    with pytest.raises(UsageError, match="cannot tell which tokenizer"):
        hf_import.import_checkpoint(ws, src)
    assert not ws.run_dir("m").exists() and not list(ws.runs_dir.glob(".tmp-*"))


class _Payload:
    """Unpickling this runs code that writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_pytorch_model_bin_is_refused(tmp_path):
    src = tmp_path / "evil"
    _save_pretrained(src)
    (src / "model.safetensors").unlink()
    marker = tmp_path / "marker"
    torch.save({"transformer.wte.weight": torch.zeros(1), "x": _Payload(marker)}, src / "pytorch_model.bin")
    # the payload is real: an unsafe load would run it
    proof = tmp_path / "proof"
    torch.save({"x": _Payload(proof)}, tmp_path / "proof.bin")
    torch.load(tmp_path / "proof.bin", weights_only=False)
    assert proof.exists()

    ws = Workspace.resolve(tmp_path / "ws")
    with pytest.raises(CheckpointError, match="refusing to load .*pytorch_model.bin"):
        hf_import.import_checkpoint(ws, src)
    assert not marker.exists()
    assert not ws.run_dir("evil").exists()


def test_malicious_trainer_state_is_refused(tmp_path, make_ckpt_run):
    from lmforge.checkpoint.store import load_trainer_state

    run = make_ckpt_run("r", [(10, "full")])
    ckpt = run / "checkpoints" / "step-10"
    assert load_trainer_state(ckpt)["step"] == 10
    marker = tmp_path / "marker"
    torch.save({"step": 10, "x": _Payload(marker)}, ckpt / "trainer.pt")
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"]["trainer.pt"] = (ckpt / "trainer.pt").stat().st_size  # so the size check passes
    meta["sha256"]["trainer.pt"] = sha256_file(ckpt / "trainer.pt")  # a tamperer updates it too
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="refusing"):
        load_trainer_state(ckpt)
    assert not marker.exists()


# ----------------------------------------------------------------------------- tokenizer files


def _train_ranks(text: bytes, merges: int) -> dict[bytes, int]:
    """A tiny byte-level BPE trained on ``text`` (within GPT-2 pre-tokenized words)."""
    import regex

    from lmforge.data.tokenizer import GPT2_PATTERN

    words = [[bytes([b]) for b in w.encode()] for w in regex.findall(GPT2_PATTERN, text.decode())]
    ranks = {bytes([i]): i for i in range(256)}
    for _ in range(merges):
        counts: dict[tuple[bytes, bytes], int] = {}
        for w in words:
            for pair in zip(w, w[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        a, b = max(counts, key=lambda p: (counts[p], p))
        ranks[a + b] = len(ranks)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if w[i] == a and w[i + 1] == b:
                    w[i : i + 2] = [a + b]
                i += 1
    return ranks


def test_tokenizer_files_give_the_same_ids_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("regex")
    import tiktoken

    from lmforge.data.tokenizer import ENDOFTEXT, GPT2_PATTERN, Tokenizer

    corpus = b"the theory of the thermal theme: there, then, the other thing's that thin thread. " * 3
    ranks = _train_ranks(corpus, 40)
    enc = tiktoken.Encoding(
        "toy", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={ENDOFTEXT: len(ranks)}
    )
    tok = Tokenizer(enc, "toy")
    for name, text in hf_tokenizer.hf_tokenizer_files(tok, 64).items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert hf_tokenizer.ranks_from_hf_tokenizer(tmp_path) == ranks
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for text in [
        "the theory of everything",
        " then there's that thin thermal thread!",
        "naïve café 日本 the\n\n x",
    ]:
        assert theirs(text)["input_ids"] == tok.encode(text), text
    assert theirs.eos_token_id == tok.eot_token


def test_export_never_damages_an_existing_directory(tmp_path, make_ckpt_run, monkeypatch):
    ckpt = make_ckpt_run("r", [(10, "light")]) / "checkpoints" / "step-10"
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(UsageError, match="not empty"):
        hf_export.export_checkpoint(ckpt, out, "safetensors")
    with pytest.raises(UsageError, match="not a previous export.*keep.txt"):
        hf_export.export_checkpoint(ckpt, out, "safetensors", force=True)  # --force replaces exports only
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()
    first = hf_export.export_checkpoint(ckpt, out, "safetensors")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(state_dict, meta, ckpt, out_dir):
        (out_dir / "half.bin").write_text("x")
        raise RuntimeError("disk full")

    with monkeypatch.context() as m:
        m.setattr(hf_export, "_export_safetensors", disk_full)
        with pytest.raises(RuntimeError):
            hf_export.export_checkpoint(ckpt, out, "safetensors", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "ws"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous export is intact
    result = hf_export.export_checkpoint(ckpt, out, "safetensors", force=True)
    assert sorted(p.name for p in out.iterdir()) == [
        hf_export.EXPORT_MARKER,
        "meta.json",
        "model.safetensors",
    ]
    assert sorted(result.files) == ["meta.json", "model.safetensors"]
    assert sorted(result.files) == sorted(first.files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "ws"]
