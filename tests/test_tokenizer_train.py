"""``lmforge tokenizer train/list/show`` and trained tokenizers used by name everywhere:
round trips, the same ids as Hugging Face's tokenizer, prepare/train/eval/generate/export/import,
and word perplexity computed on the same words whatever the tokenizer."""

from __future__ import annotations

import json
import math
import random
import shutil

import pytest
from data_fixtures import write_ranks_file, write_wikitext

from lmforge.data.tokenizer import (
    ENDOFTEXT,
    GPT4_PATTERN,
    content_sha256,
    get_tokenizer,
    ranks_sha256,
)
from lmforge.data.tokenizer_train import parse_char_count, train_tokenizer
from lmforge.errors import DataError, UsageError
from lmforge.interop.hf_tokenizer import TOKENIZER_JSON, hf_tokenizer_files, read_fast_tokenizer_json
from lmforge.workspace import Workspace


def random_unicode(rng: random.Random, n: int) -> str:
    """Text of any code point but surrogates: ASCII, Latin, CJK, emoji, controls, the planes above."""
    ranges = [(0, 0x7F), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF)]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        out.append(chr(rng.randint(lo, hi)) if rng.random() < 0.6 else rng.choice(" \n\t'sthe 1234.,"))
    return "".join(out)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A generated WikiText source folder."""
    root = tmp_path_factory.mktemp("tok-corpus")
    write_wikitext(root / "src", sizes=(("train", 60), ("validation", 6), ("test", 4)))
    return root / "src"


@pytest.fixture(scope="module")
def trained_ws(tmp_path_factory, corpus):
    """A workspace with two trained tokenizers: ``t-gpt2`` (GPT-2's pattern, one extra special
    token) and ``t-gpt4`` (GPT-4's pattern)."""
    ws = Workspace.resolve(tmp_path_factory.mktemp("tok-ws"))
    train_tokenizer(ws, "t-gpt2", "wikitext-2", source_dir=str(corpus), vocab_size=400, special=["<|pad|>"])
    train_tokenizer(ws, "t-gpt4", "wikitext-2", source_dir=str(corpus), vocab_size=380, pattern="gpt4")
    return ws


@pytest.fixture
def ws_with_tokenizers(workspace_dir, trained_ws):
    shutil.copytree(trained_ws.tokenizers_dir, workspace_dir / "tokenizers")
    return workspace_dir


@pytest.mark.parametrize("name", ["t-gpt2", "t-gpt4"])
def test_decode_encode_round_trips_random_unicode(trained_ws, name):
    tok = get_tokenizer(name, workspace=trained_ws)
    rng = random.Random(0)
    for _ in range(200):
        text = random_unicode(rng, rng.randint(0, 80))
        ids = tok.encode(text)
        assert max(ids, default=0) < tok.vocab_size
        assert tok.decode(ids) == text
        assert tok.encode_array(text).tolist() == ids
    assert tok.decode(tok.encode(f"a{ENDOFTEXT}b")) == f"a{ENDOFTEXT}b"  # special text stays text


@pytest.mark.parametrize("name", ["t-gpt2", "t-gpt4"])
def test_fast_tokenizer_json_gives_lmforges_ids(trained_ws, corpus, name, tmp_path):
    from tokenizers import Tokenizer as FastTokenizer

    tok = get_tokenizer(name, workspace=trained_ws)
    files = hf_tokenizer_files(tok, 64)
    fast = FastTokenizer.from_str(files[TOKENIZER_JSON])
    rng = random.Random(1)
    texts = [random_unicode(rng, 60) for _ in range(100)]
    texts += [(corpus / "wiki.test.raw").read_text(encoding="utf-8"), " 12345 1941 don't DON'T  \n\n x  "]
    for text in texts:
        assert fast.encode(text).ids == tok.encode(text), text[:40]
        assert fast.decode(fast.encode(text).ids) == text
    (tmp_path / TOKENIZER_JSON).write_text(files[TOKENIZER_JSON], encoding="utf-8")
    ranks, pattern, specials = read_fast_tokenizer_json(tmp_path / TOKENIZER_JSON)
    assert content_sha256(ranks, pattern, specials) == tok.identity["sha256"]


def test_trained_tokenizer_files_and_identity(trained_ws):
    meta = json.loads((trained_ws.tokenizers_dir / "t-gpt2.json").read_text())
    tok = get_tokenizer("t-gpt2", workspace=trained_ws)
    assert meta["special_tokens"] == ["<|pad|>", ENDOFTEXT]
    assert tok.vocab_size == meta["vocab_size"] == 400
    assert tok.eot_token == 399 and tok.encoding._special_tokens["<|pad|>"] == 398
    assert tok.identity == {"name": "t-gpt2", "sha256": meta["sha256"]}
    ranks = tok.encoding._mergeable_ranks
    assert all(ranks[bytes([b])] == b for b in range(256))  # every byte: no unknown token
    # the hash covers the pattern and special tokens, not only the ranks
    assert meta["sha256"] != ranks_sha256(ranks)
    assert content_sha256(ranks, GPT4_PATTERN, ["<|pad|>", ENDOFTEXT]) != meta["sha256"]
    gpt4 = get_tokenizer("t-gpt4", workspace=trained_ws)
    assert gpt4.pattern == GPT4_PATTERN and gpt4.vocab_size == 380
    assert gpt4.encode(" 12345") == gpt4.encode(" ") + gpt4.encode("123") + gpt4.encode("45")
    corpus_meta = meta["corpus"]
    assert corpus_meta["documents"] > 0 and corpus_meta["chars"] > 10_000
    held = meta["held_out"]  # every 20th article: 3 of 60
    assert held["documents"] == 3 and held["bytes_per_token"] == round(held["bytes"] / held["tokens"], 4)


def test_character_budget(tmp_path, corpus):
    ws = Workspace.resolve(tmp_path / "ws")
    result = train_tokenizer(
        ws, "small", "wikitext-2", source_dir=str(corpus), vocab_size=300, max_chars=5000
    )
    assert result.meta["corpus"]["chars"] == 5000 and result.meta["corpus"]["max_chars"] == 5000
    assert parse_char_count("2B") == 2_000_000_000 and parse_char_count("500k") == 500_000
    assert parse_char_count("1.5M") == 1_500_000 and parse_char_count("123") == 123
    for bad in ("abc", "0", "-5", "2X"):
        with pytest.raises(UsageError, match="--max-chars"):
            parse_char_count(bad)


def test_cli_train_list_show(cli, workspace_dir, tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text(" the cat sat on the mat . \n" * 600 + "日本語 café\n" * 50, encoding="utf-8")
    r = cli("tokenizer", "train", "cats", str(text), "--vocab-size", "300", "--max-chars", "10k", "--json")
    assert r.exit_code == 0, r.stderr
    trained = json.loads(r.stdout)
    assert trained["vocab_size"] <= 300 and trained["corpus"]["chars"] == 10_000
    assert (workspace_dir / "tokenizers" / "cats.tiktoken").is_file()

    listed = json.loads(cli("tokenizer", "list", "--json").stdout)["tokenizers"]
    assert [t["name"] for t in listed] == ["gpt2", "bytes", "cats"]
    assert "cats" in cli("tokenizer", "list").stdout
    shown = cli("tokenizer", "show", "cats")
    assert shown.exit_code == 0, shown.stderr
    for fact in ("vocab size", "<|endoftext|>", "corpus.txt", "sha256", trained["sha256"][:12]):
        assert fact in shown.stdout
    assert json.loads(cli("tokenizer", "show", "bytes", "--json").stdout)["vocab_size"] == 257

    again = cli("tokenizer", "train", "cats", str(text), "--vocab-size", "300")
    assert again.exit_code == 2 and "exists" in again.stderr and "--force" in again.stderr
    forced = cli("tokenizer", "train", "cats", str(text), "--vocab-size", "280", "--force", "--json")
    assert forced.exit_code == 0 and json.loads(forced.stdout)["vocab_size"] == 280


def test_errors_are_one_line(cli, ws_with_tokenizers, tmp_path):
    text = tmp_path / "c.txt"
    text.write_text("some text here\n" * 20)
    unknown = cli("tokenizer", "show", "nope")
    assert unknown.exit_code == 2
    assert "unknown tokenizer 'nope' (known: gpt2, bytes, t-gpt2, t-gpt4)" in unknown.stderr
    prepared = cli("data", "prepare", str(text), "--tokenizer", "nope")
    assert prepared.exit_code == 2 and "known: gpt2, bytes, t-gpt2, t-gpt4" in prepared.stderr
    for args, message in [
        (["gpt2", str(text)], "built in"),
        (["bad/name", str(text)], "cannot name a tokenizer"),
        (["x", str(text), "--max-chars", "lots"], "--max-chars"),
        (["x", str(text), "--pattern", "gpt5"], "unknown --pattern"),
        (["x", str(tmp_path / "missing.txt")], "unknown dataset"),
    ]:
        r = cli("tokenizer", "train", *args)
        assert r.exit_code == 2 and message in r.stderr, (args, r.stderr)
        assert len([ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]) == 1
    assert cli("tokenizer", "train", "x", str(text), "--vocab-size", "100").exit_code == 2
    hub = cli("tokenizer", "train", "x", "owner/corpus")  # a Hub id, streamed; offline here (conftest)
    assert hub.exit_code == 1 and "cannot reach the Hugging Face Hub for owner/corpus" in hub.stderr
    assert not (ws_with_tokenizers / "tokenizers" / "x.tiktoken").exists()


def test_a_tokenizer_trained_again_is_not_the_one_data_was_made_with(ws_with_tokenizers, corpus):
    from lmforge.data.tokenizer import tokenizer_from_identity

    ws = Workspace.resolve(ws_with_tokenizers)
    before = get_tokenizer("t-gpt4", workspace=ws).identity
    train_tokenizer(ws, "t-gpt4", "wikitext-2", source_dir=str(corpus), vocab_size=300, force=True)
    with pytest.raises(DataError, match="was made with sha256") as exc:
        tokenizer_from_identity(before, workspace=ws)
    assert "trained again" in exc.value.hint


def test_tokenizer_file_elsewhere_is_copied_with_its_description(trained_ws, corpus, data_ws):
    from lmforge.data.prepare import prepare_dataset

    ranks = trained_ws.tokenizers_dir / "t-gpt4.tiktoken"
    prepare_dataset(data_ws, "wikitext-2", source=corpus, tokenizer="t-gpt4", tokenizer_file=ranks)
    assert (data_ws.tokenizers_dir / "t-gpt4.json").is_file()
    copied = get_tokenizer("t-gpt4", workspace=data_ws)
    assert copied.identity == get_tokenizer("t-gpt4", workspace=trained_ws).identity
    assert copied.pattern == GPT4_PATTERN


def test_damaged_description_is_named(ws_with_tokenizers):
    (ws_with_tokenizers / "tokenizers" / "t-gpt4.json").write_text("{not json")
    with pytest.raises(DataError, match=r"t-gpt4\.json is damaged"):
        get_tokenizer("t-gpt4", workspace=Workspace.resolve(ws_with_tokenizers))


def test_prepare_with_a_trained_tokenizer_uses_uint16(cli, ws_with_tokenizers, corpus):
    r = cli("data", "prepare", "wikitext-2", "--source", str(corpus), "--tokenizer", "t-gpt2", "--as", "w")
    assert r.exit_code == 0, r.stderr
    meta = json.loads((ws_with_tokenizers / "datasets" / "w" / "meta.json").read_text())
    tok = get_tokenizer("t-gpt2", workspace=Workspace.resolve(ws_with_tokenizers))
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 400 and meta["tokenizer"] == tok.identity


@pytest.mark.slow
def test_train_eval_generate_export_import_with_a_trained_tokenizer(
    cli, ws_with_tokenizers, corpus, train_flags, tmp_path
):
    transformers = pytest.importorskip("transformers")
    ws = Workspace.resolve(ws_with_tokenizers)
    tok = get_tokenizer("t-gpt2", workspace=ws)
    assert (
        cli("data", "prepare", "wikitext-2", "--source", str(corpus), "--tokenizer", "t-gpt2").exit_code == 0
    )
    r = cli("train", *train_flags(steps=6, eval_interval=6, run="tt"))
    assert r.exit_code == 0, r.stderr
    run = json.loads((ws.run_dir("tt") / "run.json").read_text())
    assert run["tokenizer"] == tok.identity
    ev = cli("eval", "tt", "--json")
    assert ev.exit_code == 0, ev.stderr
    rows = json.loads(ev.stdout)
    assert {row["split"] for row in rows} == {"validation", "test"}
    assert all(math.isfinite(row["word_ppl"]) and row["bpb"] > 0 for row in rows)
    gen = cli("generate", "tt", "The history", "--max-tokens", "8", "--greedy")
    assert gen.exit_code == 0, gen.stderr
    assert "The history" in gen.stdout

    out = tmp_path / "export"
    exported = cli("ckpt", "export", "tt", "--format", "hf", "--out", str(out))
    assert exported.exit_code == 0, exported.stderr
    theirs = transformers.AutoTokenizer.from_pretrained(str(out))
    rng = random.Random(5)
    for text in [(corpus / "wiki.valid.raw").read_text(encoding="utf-8")[:3000], "<|pad|> x"] + [
        random_unicode(rng, 50) for _ in range(20)
    ]:
        ids = theirs(text)["input_ids"]
        assert ids == tok.encode(text) or "<|pad|>" in text
        assert theirs.decode(ids) == text
    assert theirs.eos_token_id == tok.eot_token

    # a workspace without the tokenizer gets it with the model
    other = tmp_path / "other-ws"
    from typer.testing import CliRunner

    from lmforge.cli.main import app

    imported = CliRunner().invoke(app, ["--workspace", str(other), "ckpt", "import", str(out), "--as", "tt2"])
    assert imported.exit_code == 0, imported.stderr
    assert get_tokenizer("t-gpt2", workspace=Workspace.resolve(other)).identity == tok.identity
    shown = CliRunner().invoke(app, ["--workspace", str(other), "tokenizer", "show", "t-gpt2", "--json"])
    assert json.loads(shown.stdout)["kind"] == "imported"


def test_checkpoint_and_data_of_other_tokenizers_are_refused(cli, ws_with_tokenizers, corpus, train_flags):
    for name, tokenizer in (("wikitext-2", "t-gpt2"), ("w-bytes", "bytes")):
        r = cli(
            "data", "prepare", "wikitext-2", "--source", str(corpus), "--tokenizer", tokenizer, "--as", name
        )
        assert r.exit_code == 0, r.stderr
    assert cli("train", *train_flags(steps=2, eval_interval=2, run="tt")).exit_code == 0
    mismatch = cli("eval", "tt", "--data", "w-bytes")
    assert mismatch.exit_code == 2
    assert "tokenizer mismatch" in mismatch.stderr and "t-gpt2" in mismatch.stderr
    small = cli("train", *train_flags(steps=2, run="small"), "--vocab-size", "300")
    assert small.exit_code == 2
    assert "vocabulary of 300 is smaller than the 400 token ids" in small.stderr


def test_word_ppl_counts_the_same_words_for_every_tokenizer(ws_with_tokenizers, corpus):
    """bytes, a GPT-2-like ranks file and a trained tokenizer: the same words and bytes per
    split, so word ppl = exp(NLL / words) and bits per byte compare across them."""
    import torch

    from lmforge.config import ModelConfig
    from lmforge.data.prepare import prepare_dataset
    from lmforge.data.store import open_dataset
    from lmforge.eval.evaluate import evaluate
    from lmforge.eval.options import EvalOptions
    from lmforge.model.gpt import GPT

    ws = Workspace.resolve(ws_with_tokenizers)
    write_ranks_file(ws.tokenizers_dir / "gpt2like.tiktoken")
    words = {}
    for tokenizer in ("bytes", "gpt2like", "t-gpt2"):
        prepare_dataset(ws, "wikitext-2", source=corpus, tokenizer=tokenizer, alias=tokenizer)
        ds = open_dataset(ws, tokenizer)
        splits = ds.meta["splits"]
        words[tokenizer] = {s: (splits[s]["words"], splits[s]["bytes"]) for s in ("validation", "test")}
        torch.manual_seed(0)
        model = GPT(ModelConfig(vocab_size=ds.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
        options = EvalOptions(block_size=32, stride=32, batch_size=8)
        rows = evaluate(model.eval(), ds, options, splits=["validation"])
        for row in rows:
            assert row.word_ppl is not None and row.bpb is not None
            n_words, n_bytes = words[tokenizer][row.split]
            assert row.word_ppl == pytest.approx(math.exp(row.text_nll / n_words), rel=1e-6)
            assert row.bpb == pytest.approx(row.text_nll / n_bytes / math.log(2), rel=1e-6)
    assert words["bytes"] == words["gpt2like"] == words["t-gpt2"]
    assert words["bytes"]["validation"][0] > 500


def test_hub_dataset_is_streamed_within_the_budget(tmp_path, monkeypatch):
    """The Hub path reads rows through datasets' streaming and stops at the budget (no network:
    ``load_dataset`` is replaced by a generator that counts the rows read)."""
    import datasets

    read = []

    def rows():
        for i in range(10_000):
            read.append(i)
            yield {"content": f"row {i} of the streamed corpus, with words and more words. ", "id": i}

    def fake_load_dataset(name, split=None, streaming=False):
        assert (name, split, streaming) == ("owner/corpus", "train", True)
        return rows()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ws = Workspace.resolve(tmp_path / "ws")
    result = train_tokenizer(
        ws, "hub", "owner/corpus", vocab_size=300, max_chars=20_000, text_column="content"
    )
    assert result.meta["corpus"]["chars"] == 20_000
    assert result.meta["corpus"]["source"] == "owner/corpus (train, streamed)"
    assert len(read) < 500  # ~60 characters a row: the budget, its held-out rows, nothing more
    with pytest.raises(UsageError, match="no column 'text' \\(columns: content, id\\)"):
        train_tokenizer(ws, "hub2", "owner/corpus", vocab_size=300)
