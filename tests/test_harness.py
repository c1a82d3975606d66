"""``--protocol harness``: lm-eval-harness's WikiText task, checked against a brute-force
per-document scorer and (when lm_eval is installed) against lm-eval's own functions."""

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.data.prepare import prepare_dataset
from lmforge.data.store import open_dataset
from lmforge.errors import DataError
from lmforge.eval.harness import (
    evaluate_harness,
    harness_bytes,
    harness_words,
    rolling_loglikelihoods,
    rolling_pairs,
    score_pairs,
    wikitext_detokenizer,
)
from lmforge.eval.options import EvalOptions
from lmforge.model.gpt import GPT

V = 257
EOT = 256


def tiny_gpt(block_size: int = 16, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=V, block_size=block_size, n_layer=2, n_head=2, n_embd=32, dropout=0.0))


def brute_force_document(model: GPT, tokens: list[int], context: int) -> float:
    """The protocol spelled out one window at a time: chunks of ``context`` targets of
    ``[eot] + tokens``, each read from the ``context`` inputs ending just before its
    last target; no batching, no padding."""
    seq = [EOT, *tokens]
    total = 0.0
    with torch.no_grad():
        for first in range(1, len(seq), context):  # targets seq[first : first + context]
            last = min(first + context, len(seq))  # one past the last target of this chunk
            begin = max(0, last - 1 - context)
            logits, _ = model(torch.tensor([seq[begin : last - 1]]))
            logp = F.log_softmax(logits[0].double(), dim=-1)
            for t in range(first, last):
                total += logp[t - 1 - begin, seq[t]].item()
    return total


@pytest.fixture
def harness_ws(data_ws, wikitext_dir):
    src, articles = wikitext_dir
    prepare_dataset(data_ws, "wikitext-2", source=src, tokenizer="bytes")
    return data_ws, articles


# ----------------------------------------------------------------------------- documents kept by prepare


def test_prepare_keeps_the_documents_of_the_eval_splits(harness_ws):
    ws, articles = harness_ws
    ds = open_dataset(ws, "wikitext-2")
    assert ds.documents("test") == articles["test"]
    assert ds.documents("validation") == articles["validation"]
    meta = ds.split_meta("test")
    assert meta["text"] == "test.text" and meta["doc_offsets"] == "test.docs.npy"
    offsets = np.load(ds.path / "train.docs.npy")
    assert len(offsets) == ds.split_meta("train")["documents"] + 1
    assert offsets[-1] == ds.split_meta("train")["bytes"]
    with pytest.raises(DataError, match="does not keep the text of a train split"):
        ds.documents("train")


def test_old_dataset_still_loads_and_says_how_to_get_documents(harness_ws):
    ws, _ = harness_ws
    ds = open_dataset(ws, "wikitext-2")
    meta = json.loads((ds.path / "meta.json").read_text())
    for entry in meta["splits"].values():  # what a dataset prepared before looks like
        entry.pop("text", None)
        entry.pop("doc_offsets", None)
    (ds.path / "meta.json").write_text(json.dumps(meta))
    old = open_dataset(ws, "wikitext-2")
    assert len(old.tokens("test")) == old.split_meta("test")["tokens"]
    with pytest.raises(DataError, match="prepared before") as info:
        old.documents("test")
    # the command keeps the options it was prepared with (meta.json's "prepare")
    assert "lmforge data prepare wikitext-2 --source " in info.value.hint
    assert info.value.hint.endswith("--tokenizer bytes --as wikitext-2 --force")


def test_changed_text_is_refused(harness_ws):
    ws, _ = harness_ws
    ds = open_dataset(ws, "wikitext-2")
    path = ds.path / "test.text"
    path.chmod(0o644)
    raw = bytearray(path.read_bytes())
    raw[10] = ord("X") if raw[10] != ord("X") else ord("Y")
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="does not match"):
        ds.documents("test")


# ----------------------------------------------------------------------------- the detokenizer and counts


# lm-eval's detokenizer's outputs, quirks included (the quote rules also eat the space between
# two quoted parts; " N " is WikiText's number placeholder)
@pytest.mark.parametrize(
    "page,expected",
    [
        (" = = Early life = = \n", " == Early life ==\n"),
        (" = = = Sub = = = \n", " === Sub ===\n"),
        ("1 @,@ 000 people , 3 @.@ 5 m and well @-@ known .", "1,000 people, 3.5 m and well-known ."),
        ("He said : yes ; no . Then ! Why ? ok", "He said: yes; no. Then! Why? ok"),
        ("the ( big ) [ red ] { box } \" quoted \" ' single '", "the (big) [red] {box} \"quoted\"'single'"),
        ("the players ' ball and John 's hat", "the players'ball and John's hat"),
        ("it was 5 \u00b0 C and N people", "it was 5\u00b0C and 1 people"),
        ("a N b", "a 1 b"),
        (" line one \n line two \n \n", " line one\nline two\n\n"),
    ],
)
def test_wikitext_detokenizer(page, expected):
    assert wikitext_detokenizer(page) == expected


def test_detokenizer_and_counts_equal_lm_eval(wikitext_dir):
    pytest.importorskip("lm_eval")
    from lm_eval.tasks.wikitext import preprocess_wikitext as ref

    _, articles = wikitext_dir
    for page in articles["test"] + articles["validation"]:
        assert wikitext_detokenizer(page) == ref.wikitext_detokenizer({"page": page})
        counts = ref.process_results({"page": page}, [-1.0])
        assert counts["word_perplexity"][1] == harness_words(page)
        assert counts["bits_per_byte"][1] == harness_bytes(page)


def test_word_count_keeps_lm_evals_empty_ends():
    # a page that starts and ends with whitespace splits into an empty string at each end
    assert harness_words(" \n = T = \n a b \n") == 5 + 2
    assert harness_words("a b") == 2
    assert harness_words(" a b") == len(re.split(r"\s+", " a b")) == 3


# ----------------------------------------------------------------------------- windows and scoring


@pytest.mark.parametrize("n", [1, 5, 15, 16, 17, 31, 32, 33, 50])
def test_rolling_pairs_cover_every_token_once(n):
    tokens = list(range(100, 100 + n))
    pairs = rolling_pairs(tokens, EOT, 16)
    assert [t for _, cont in pairs for t in cont] == tokens
    for ctx, cont in pairs:
        assert len([*ctx, *cont]) - 1 <= 16 and 1 <= len(ctx)
    assert pairs[0][0] == [EOT]


@pytest.mark.parametrize("n", [1, 7, 16, 17, 40, 64, 65])
def test_rolling_pairs_equal_lm_eval(n):
    pytest.importorskip("lm_eval")
    from lm_eval import utils

    tokens = list(range(n))
    ref = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(tokens, EOT, 16, 1)]
    assert rolling_pairs(tokens, EOT, 16) == [(list(a), list(b)) for a, b in ref]


def test_harness_protocol_equals_brute_force(harness_ws):
    ws, articles = harness_ws
    model = tiny_gpt()
    model.eval()
    from lmforge.data.tokenizer import bytes_tokenizer

    tok = bytes_tokenizer()
    ds = open_dataset(ws, "wikitext-2")
    (row,) = evaluate_harness(model, tok, ds, EvalOptions(batch_size=3), splits=["test"])
    pages = articles["test"]
    encoded = [tok.encode(wikitext_detokenizer(p)) for p in pages]
    ll = sum(brute_force_document(model, t, 16) for t in encoded)
    words = sum(len(re.split(r"\s+", p)) for p in pages)
    nbytes = sum(len(p.encode()) for p in pages)
    assert row.protocol == "harness" and row.documents == len(pages) and row.eot_tokens == 0
    assert row.tokens == sum(map(len, encoded))
    assert row.text_nll == pytest.approx(-ll, rel=1e-5)
    assert row.word_ppl == pytest.approx(math.exp(-ll / words), rel=1e-5)
    assert row.byte_ppl == pytest.approx(math.exp(-ll / nbytes), rel=1e-5)
    assert row.bpb == pytest.approx(-ll / nbytes / math.log(2), rel=1e-5)
    assert row.loss == pytest.approx(-ll / row.tokens, rel=1e-5)
    assert not row.to_dict()["ppl_includes_eot"]


def test_rank_shares_add_up_to_the_whole():
    model = tiny_gpt()
    docs = [list(np.random.default_rng(i).integers(0, 256, n)) for i, n in enumerate([3, 40, 16, 17, 70])]
    whole = rolling_loglikelihoods(model, docs, EvalOptions(batch_size=2), prefix=EOT)
    shares = [
        rolling_loglikelihoods(model, docs, EvalOptions(batch_size=2, rank=r, world_size=2), prefix=EOT)
        for r in (0, 1)
    ]
    assert np.allclose(np.add(*shares), whole, rtol=1e-5)
    assert whole[0] == pytest.approx(brute_force_document(model, [int(t) for t in docs[0]], 16), rel=1e-5)


def test_score_pairs_greedy_and_padding():
    model = tiny_gpt()
    with torch.no_grad():
        logits, _ = model(torch.tensor([[EOT, 5, 6]]))
    best = int(logits[0, -1].argmax())
    pairs = [([EOT, 5, 6], [best]), ([EOT], [1, 2, 3, 4, 5, 6, 7]), ([EOT, 5, 6], [(best + 1) % 256])]
    together = score_pairs(model, pairs, EvalOptions(batch_size=3))
    alone = [score_pairs(model, [p], EvalOptions(batch_size=1))[0] for p in pairs]
    assert [g for _, g in together] == [True, False, False]
    assert np.allclose([v for v, _ in together], [v for v, _ in alone], rtol=1e-5)
    expected = F.log_softmax(logits[0, -1].double(), -1)[best].item()
    assert together[0][0] == pytest.approx(expected, rel=1e-5)
