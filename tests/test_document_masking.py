"""Document masking (``--document-masking``, issue 26): within a window, attention never crosses an
end-of-text token. The mask's property on the model, the KV cache equal to no cache across
documents, stream evaluation against a by-hand computation, training unchanged without
end-of-text tokens, the config (refusals, TOML, old checkpoints, --dry-run, export) and an exact
resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from resume_helpers import assert_same_curves, curve, resume_to_end, train_until

from lmforge import TrainingManager
from lmforge.checkpoint.store import load_model, save_checkpoint
from lmforge.config import ModelConfig, TrainingConfig
from lmforge.errors import ConfigError
from lmforge.eval.evaluate import evaluate_tokens, sliding_windows
from lmforge.eval.options import EvalOptions
from lmforge.model import build_model
from lmforge.model.attention import document_mask
from lmforge.observe.reporting import Reporter
from lmforge.presets import resolve_config
from lmforge.train.run_spec import resolve_eot

V = 64
EOT = V - 1  # the vocabulary of these tests: ids 0..62 are text, 63 ends a document
T = 24


def _config(**kw) -> ModelConfig:
    base = dict(
        vocab_size=V,
        block_size=T,
        n_layer=2,
        n_head=4,
        n_embd=32,
        n_kv_head=2,
        dropout=0.0,
        arch="modern",
        bias=False,
        qk_norm=True,
        logit_softcap=15.0,
        document_masking=True,
        eot_token=EOT,
    )
    return ModelConfig(**{**base, **kw})


def _model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(_config(**kw))
    with torch.no_grad():  # output projections and the head start at zero: give them values
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _text(*shape: int, seed: int = 0) -> torch.Tensor:
    """Token ids without an end-of-text token."""
    return torch.randint(0, EOT, shape, generator=torch.Generator().manual_seed(seed))


def _logits(model, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx)[0]


def test_the_mask_is_causal_and_block_diagonal():
    doc_ids = torch.tensor([[0, 0, 1, 1, 1, 2]])
    mask = document_mask(doc_ids, 6)[0, 0].int()
    assert mask.tolist() == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ]
    # the last 2 positions as queries after 4 cached ones: the bottom rows
    assert document_mask(doc_ids, 2)[0, 0].int().tolist() == mask[4:].tolist()


def test_a_future_token_never_changes_an_earlier_logit():
    model = _model()
    idx = _text(2, T)
    idx[:, 7] = EOT
    changed = idx.clone()
    changed[:, 12:] = _text(2, T - 12, seed=1)
    changed[0, 15] = EOT
    a, b = _logits(model, idx), _logits(model, changed)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=1e-6)


def test_text_before_the_previous_end_of_text_never_changes_a_logit():
    model, plain = _model(), _model(document_masking=False)
    idx = _text(2, T)
    idx[0, 9], idx[1, 4] = EOT, EOT
    changed = idx.clone()
    changed[0, :9] = _text(9, seed=1)
    changed[1, :4] = _text(4, seed=2)
    a, b = _logits(model, idx), _logits(model, changed)
    torch.testing.assert_close(a[0, 9:], b[0, 9:], rtol=0, atol=1e-6)
    torch.testing.assert_close(a[1, 4:], b[1, 4:], rtol=0, atol=1e-6)
    # without the mask the same change reaches the later document (the test could fail)
    assert not torch.allclose(_logits(plain, idx)[0, 9:], _logits(plain, changed)[0, 9:], atol=1e-3)


def test_a_document_scores_as_if_its_window_began_at_its_end_of_text_token():
    """Rotary positions are relative, so a document after an end-of-text token gets the logits it
    gets on its own."""
    model = _model()
    idx = _text(1, T)
    idx[0, 10] = EOT
    torch.testing.assert_close(_logits(model, idx)[:, 10:], _logits(model, idx[:, 10:]), rtol=1e-5, atol=1e-5)


def _cached_logits(model, idx: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    """The last position's logits after each chunk, fed through one KV cache."""
    cache = model.new_kv_cache(idx.size(0))
    out, start = [], 0
    with torch.no_grad():
        for n in chunks:
            out.append(model(idx[:, start : start + n], kv_cache=cache)[0][:, -1])
            start += n
    return torch.stack(out, 1)  # (B, len(chunks), V)


@pytest.mark.parametrize("chunks", [[9, *[1] * 15], [5, 4, 1, 6, 1, 7]])
def test_the_kv_cache_gives_the_logits_of_a_full_forward_across_documents(chunks):
    """A prompt with an end-of-text token mid-way, then one more in the generated part (and, in
    the second case, several tokens at once after a cached prefix)."""
    model = _model()
    idx = _text(2, T)
    idx[0, 3], idx[0, 14], idx[1, 8], idx[1, 9] = EOT, EOT, EOT, EOT
    full = _logits(model, idx)
    ends = np.cumsum(chunks) - 1
    torch.testing.assert_close(_cached_logits(model, idx, chunks), full[:, ends], rtol=1e-5, atol=1e-5)


def test_generation_with_and_without_the_cache_is_the_same(monkeypatch):
    from lmforge.eval.generate import _generate_one

    model = _model()
    prompt = [5, 9, EOT, 12, 30, 31]
    runs = []
    for use_cache in (True, False):
        runs.append(
            _generate_one(
                model,
                T,
                prompt,
                max_tokens=12,
                sample=lambda logits: logits.argmax(-1),
                eot=None,
                use_cache=use_cache,
                stream=None,
                emit=None,
            )
        )
    assert runs[0] == runs[1]


def test_an_unknown_end_of_text_id_is_refused_at_the_first_forward():
    model = build_model(_config(eot_token=-1))
    with pytest.raises(ConfigError, match="--document-masking needs the end-of-text token id"):
        model(_text(1, 4))


def test_the_option_needs_the_modern_architecture_and_a_valid_id():
    with pytest.raises(ConfigError, match="--document-masking needs --arch modern"):
        ModelConfig(document_masking=True)
    with pytest.raises(ConfigError, match="--eot-token must be a token id below --vocab-size"):
        _config(eot_token=V)
    assert resolve_eot(_config(eot_token=-1), EOT, "d").eot_token == EOT
    with pytest.raises(ConfigError, match="--eot-token 3 differs from dataset 'd''s end-of-text id 63"):
        resolve_eot(_config(eot_token=3), EOT, "d")


def test_training_changes_only_where_a_window_holds_an_end_of_text_token():
    def loss_and_grads(model, idx, targets):
        model.zero_grad()
        loss = model(idx, targets)[1]
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    on, off = _model().train(), _model(document_masking=False).train()
    idx, targets = _text(2, T), _text(2, T, seed=3)
    for a, b in zip(loss_and_grads(on, idx, targets)[1], loss_and_grads(off, idx, targets)[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    idx[1, 11] = EOT
    loss_on, _ = loss_and_grads(on, idx, targets)
    loss_off, _ = loss_and_grads(off, idx, targets)
    assert abs(loss_on - loss_off) > 1e-4


def test_gradient_checkpointing_recomputes_with_the_same_mask():
    idx, targets = _text(2, T), _text(2, T, seed=3)
    idx[0, 5] = EOT
    grads = []
    for recompute in (False, True):
        model = _model(gradient_checkpointing=recompute).train()
        model(idx, targets)[1].backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_stream_evaluation_scores_each_target_within_its_document():
    """Every target by hand: the model without the mask on the tokens of its own document inside
    its window. Evaluation that bypassed the mask would differ."""
    model, plain = _model(), _model(document_masking=False)
    tokens = _text(70, seed=4)
    tokens[[6, 20, 21, 45]] = EOT
    options = EvalOptions(block_size=16, stride=8, batch_size=3, device="cpu", dtype="fp32")
    result = evaluate_tokens(model, tokens, options)
    expected = 0.0
    with torch.no_grad():
        for begin, end, first in sliding_windows(len(tokens), 16, 8):
            for t in range(first, end):  # input position t predicts tokens[t + 1]
                eots = [s for s in range(begin, t + 1) if tokens[s] == EOT]
                start = eots[-1] if eots else begin
                logits = plain(tokens[start : t + 1][None])[0][0, -1]
                expected += torch.nn.functional.cross_entropy(logits, tokens[t + 1]).item()
    assert result.tokens == len(tokens) - 1
    assert result.loss_sum == pytest.approx(expected, rel=1e-5)
    assert evaluate_tokens(plain, tokens, options).loss_sum != pytest.approx(expected, rel=1e-3)


# ----------------------------------------------------------------------------- config, checkpoints, CLI


@pytest.mark.parametrize("on", [True, False])
def test_the_option_round_trips_through_toml(tmp_path, on):
    c = resolve_config(preset="tiny", overrides={("recipe",): "modern", ("model", "document_masking"): on})
    path = tmp_path / "config.toml"
    path.write_text(c.to_toml())
    assert TrainingConfig.from_toml(path).model.document_masking is on
    assert TrainingConfig.from_toml(path) == c


def test_a_checkpoint_without_the_keys_loads_with_the_option_off(tmp_path):
    config = TrainingConfig(model=_config(document_masking=False, eot_token=-1))
    model = build_model(config.model)
    meta_config = config.to_dict()
    del meta_config["model"]["document_masking"], meta_config["model"]["eot_token"]  # an older lmforge's
    save_checkpoint(tmp_path / "old", model, {"kind": "light", "step": 1, "config": meta_config})
    meta = json.loads((tmp_path / "old" / "meta.json").read_text())
    assert "document_masking" not in meta["config"]["model"]
    loaded, loaded_config, _ = load_model(tmp_path / "old")
    assert (loaded_config.model.document_masking, loaded_config.model.eot_token) == (False, -1)
    idx = _text(1, 8)
    torch.testing.assert_close(_logits(loaded.eval(), idx), _logits(model.eval(), idx))


def test_export_to_nanochat_is_refused_naming_the_lever():
    from lmforge.interop.nanochat import nanochat_config

    with pytest.raises(ConfigError, match="cannot export --document-masking to NanoChatForCausalLM"):
        nanochat_config(_config())
    nanochat_config(_config(document_masking=False))


def test_dry_run_shows_the_option(cli):
    r = cli("train", "--preset", "tiny", "--recipe", "modern", "--document-masking", "--dry-run")
    assert r.exit_code == 0, r.stderr
    assert "document_masking = true" in r.stdout and "within documents" in r.stdout
    r = cli("train", "--preset", "tiny", "--recipe", "modern", "--dry-run")
    assert r.exit_code == 0 and "within documents" not in r.stdout
    r = cli("train", "--preset", "tiny", "--document-masking", "--dry-run")
    assert r.exit_code != 0 and "--document-masking needs --arch modern" in r.stderr


def test_resume_with_document_masking_is_the_straight_run_bitwise(train_workspace, tiny_train_config):
    from lmforge.data.store import open_dataset
    from lmforge.workspace import Workspace

    def config(run, on=True):
        return tiny_train_config(
            steps=8, eval_interval=4, sample_tokens=0, run=run, recipe="modern", document_masking=on
        )

    dataset = open_dataset(Workspace.resolve(train_workspace), "wikitext-2")
    first_tokens = np.asarray(dataset.tokens("train")[: 8 * 4 * 32])
    assert (first_tokens == dataset.eot_token).sum() >= 2  # the run's windows hold documents' ends

    TrainingManager(config("straight"), train_workspace, reporter=Reporter()).train()
    saved = TrainingConfig.from_toml(train_workspace / "runs" / "straight" / "config.toml").model
    assert (saved.document_masking, saved.eot_token) == (True, dataset.eot_token)  # from the data
    train_until(config("halves"), train_workspace, 4)
    resume_to_end(train_workspace, "halves")
    assert_same_curves(train_workspace, "halves", "straight")
    # and the option did change this training: its windows hold end-of-text tokens
    TrainingManager(config("off", on=False), train_workspace, reporter=Reporter()).train()
    losses = curve(train_workspace, "off", "train", "loss")
    assert losses[1:] != curve(train_workspace, "straight", "train", "loss")[1:]


def test_turning_the_option_on_at_a_resume_is_refused(train_workspace, tiny_train_config):
    from lmforge.train.run_spec import resume_config

    config = tiny_train_config(steps=2, eval_interval=2, sample_tokens=0, run="r", recipe="modern")
    TrainingManager(config, train_workspace, reporter=Reporter()).train()
    turned_on = {("model", "document_masking"): True, ("train", "steps"): 4}
    with pytest.raises(ConfigError, match="model.document_masking: False -> True"):
        resume_config(train_workspace / "runs" / "r", turned_on)
