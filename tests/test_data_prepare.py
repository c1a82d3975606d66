"""``prepare_dataset`` and the reader: articles, end-of-text placement, counts, atomicity, errors."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from data_fixtures import SPLIT_FILES, write_ranks_file, write_wikitext

from lmforge.data import encode
from lmforge.data import prepare as prep
from lmforge.data.local import safe_cut, text_file_documents
from lmforge.data.prepare import prepare_dataset
from lmforge.data.shards import Batch, SplitShards
from lmforge.data.store import check_tokenizer_match, dtype_for_vocab, list_datasets, open_dataset
from lmforge.data.tokenizer import bytes_tokenizer, tokenizer_from_ranks_file
from lmforge.data.wikitext import split_wikitext_articles
from lmforge.errors import DataError, NotFoundError, UsageError

# --------------------------------------------------------------------------- articles


def test_articles_split_at_level1_headings_only(wikitext_dir):
    _, articles = wikitext_dir
    text = "".join(articles["test"])  # holds the formula lines that look like headings
    assert text.count("\n = 1 rad / s and a nominal impedance k = \n") == 1
    for block in (1 << 20, 97, 7):  # articles must not depend on how the text is read
        blocks = [text[i : i + block] for i in range(0, len(text), block)]
        assert list(split_wikitext_articles(blocks)) == articles["test"]


def test_articles_edge_cases():
    assert list(split_wikitext_articles([" = A = \n \n x \n \n = B = \n \n y \n"])) == [
        " = A = \n \n x \n",
        " \n = B = \n \n y \n",
    ]
    # "\n" blank lines (not WikiText's " \n") are accepted too; sections never start an article
    assert len(list(split_wikitext_articles([" = A = \n\n x \n\n = B = \n\n = = S = = \n\n y \n"]))) == 2
    assert list(split_wikitext_articles(["no heading at all\n"])) == ["no heading at all\n"]
    assert list(split_wikitext_articles([])) == []


def test_prepare_wikitext_round_trip_and_meta(data_ws, wikitext_dir, byte_tokenizer):
    src, articles = wikitext_dir
    result = prepare_dataset(data_ws, "wikitext-2", source=src, tokenizer="bytes")
    assert not result.already_prepared and result.name == "wikitext-2"
    ds = open_dataset(data_ws, "wikitext-2")
    assert ds.splits == ["train", "validation", "test"]
    assert ds.meta["dtype"] == "uint16" and ds.vocab_size == 257 and ds.eot_token == 256
    assert ds.tokenizer_identity == byte_tokenizer.identity
    for split, docs in articles.items():
        raw = (src / SPLIT_FILES[split]).read_bytes()
        tokens = ds.tokens(split)
        assert tokens.dtype == np.uint16 and not tokens.flags.writeable
        # one end-of-text between articles, none at the ends
        eot_at = np.flatnonzero(tokens == 256)
        assert len(eot_at) == len(docs) - 1 and tokens[0] != 256 and tokens[-1] != 256
        pieces = np.split(np.asarray(tokens), eot_at)
        assert [byte_tokenizer.decode(p[p != 256]) for p in pieces] == docs
        # lossless: the split without its end-of-text tokens is the source, byte for byte
        assert byte_tokenizer.decode_bytes(tokens[tokens != 256]) == raw
        m = ds.split_meta(split)
        text = raw.decode()
        assert m["tokens"] == len(tokens) == len(raw) + len(docs) - 1
        assert (m["documents"], m["bytes"], m["words"]) == (len(docs), len(raw), len(text.split()))
        import hashlib

        assert m["sha256"] == hashlib.sha256(raw).hexdigest()
        assert m["source"].endswith(SPLIT_FILES[split])


def test_token_counts_equal_direct_encoding(data_ws, wikitext_dir, ranks_file):
    """With a BPE that merges, the tokens per article equal a direct tiktoken encoding."""
    src, articles = wikitext_dir
    tok = tokenizer_from_ranks_file(ranks_file, name="small")
    data_ws.ensure(data_ws.tokenizers_dir)
    write_ranks_file(data_ws.tokenizers_dir / "small.tiktoken")
    prepare_dataset(data_ws, "wikitext-2", source=src, tokenizer="small")
    ds = open_dataset(data_ws, "wikitext-2")
    assert ds.tokenizer_identity == tok.identity and ds.eot_token == tok.eot_token
    for split, docs in articles.items():
        expected = []
        for i, doc in enumerate(docs):
            expected += ([tok.eot_token] if i else []) + tok.encoding.encode_ordinary(doc)
        assert ds.tokens(split).tolist() == expected


def test_parallel_pipeline_matches_inline(data_ws, wikitext_dir, ranks_file, monkeypatch):
    src, _ = wikitext_dir
    data_ws.ensure(data_ws.tokenizers_dir)
    write_ranks_file(data_ws.tokenizers_dir / "small.tiktoken")
    prepare_dataset(data_ws, "wikitext-2", source=src, tokenizer="small", alias="inline")
    monkeypatch.setattr(encode, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(encode, "BATCH_BYTES", 2000)  # many small batches in flight
    prepare_dataset(data_ws, "wikitext-2", source=src, tokenizer="small", alias="parallel", num_proc=2)
    a, b = open_dataset(data_ws, "inline"), open_dataset(data_ws, "parallel")
    for split in a.splits:
        assert np.array_equal(a.tokens(split), b.tokens(split))
        assert a.split_meta(split) == b.split_meta(split)


def test_zip_and_parquet_sources(data_ws, wikitext_dir, tmp_path):
    src, articles = wikitext_dir
    prepare_dataset(data_ws, "wikitext-103", source=src, tokenizer="bytes", alias="raw")
    # the original zip layout: wikitext-103-raw/wiki.*.raw
    archive = tmp_path / "wikitext-103-raw-v1.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in SPLIT_FILES.values():
            zf.write(src / name, f"wikitext-103-raw/{name}")
    prepare_dataset(data_ws, "wikitext-103", source=archive, tokenizer="bytes", alias="zip")
    # the Hub's parquet layout: one row per line, blank lines as ""
    import pyarrow as pa
    import pyarrow.parquet as pq

    config = tmp_path / "hub" / "wikitext" / "wikitext-103-raw-v1"
    config.mkdir(parents=True)
    for split, name in SPLIT_FILES.items():
        lines = (src / name).read_text(encoding="utf-8").split("\n")[:-1]
        rows = ["" if line == " " else line + "\n" for line in lines]
        pq.write_table(pa.table({"text": rows}), config / f"{split}-00000-of-00001.parquet")
    prepare_dataset(
        data_ws, "wikitext-103-raw-v1", source=tmp_path / "hub", tokenizer="bytes", alias="parquet"
    )
    raw, z, pqt = (open_dataset(data_ws, n) for n in ("raw", "zip", "parquet"))
    for split in SPLIT_FILES:
        assert np.array_equal(raw.tokens(split), z.tokens(split))
        assert np.array_equal(raw.tokens(split), pqt.tokens(split))
        assert raw.split_meta(split)["sha256"] == pqt.split_meta(split)["sha256"]


def test_tokenized_v1_variant_reads_tokens_files(data_ws, wikitext_dir):
    src, articles = wikitext_dir
    with pytest.raises(UsageError, match="-v1"):  # .raw files are not the -v1 variant's
        prepare_dataset(data_ws, "wikitext-2-v1", source=src, tokenizer="bytes")
    for name in SPLIT_FILES.values():
        (src / name).rename(src / name.replace(".raw", ".tokens"))
    result = prepare_dataset(data_ws, "wikitext-2-v1", source=src, tokenizer="bytes")
    assert result.name == "wikitext-2-v1"
    assert result.meta["splits"]["test"]["documents"] == len(articles["test"])


def test_only_some_splits(data_ws, wikitext_dir):
    src, _ = wikitext_dir
    (src / "wiki.train.raw").unlink()
    with pytest.raises(UsageError) as exc:
        prepare_dataset(data_ws, "wikitext-2", source=src, tokenizer="bytes")
    assert "wiki.train.raw" in exc.value.message and "--splits validation,test" in exc.value.hint
    prepare_dataset(data_ws, "wikitext-2", source=src, tokenizer="bytes", splits="valid,test")
    ds = open_dataset(data_ws, "wikitext-2")
    assert ds.splits == ["validation", "test"]
    with pytest.raises(UsageError) as exc:
        ds.tokens("train")
    assert "has no 'train' split (it has validation, test)" in exc.value.message
    assert "--splits validation,test,train" in exc.value.hint
    # asking again for a split it lacks is not "already prepared"
    with pytest.raises(UsageError, match="without split"):
        prepare_dataset(data_ws, "wikitext-2", source=src, tokenizer="bytes", splits="train")


# --------------------------------------------------------------------------- dtype


def test_dtype_choice_and_overflow_refused(tmp_path):
    assert dtype_for_vocab(257) == np.uint16
    assert dtype_for_vocab(50257) == np.uint16
    assert dtype_for_vocab(65536) == np.uint16
    assert dtype_for_vocab(65537) == np.uint32
    tokens, _, _ = encode.encode_batch([(b"ab", False)], "uint16", 257, bytes_tokenizer())
    assert tokens.dtype == np.uint16
    # an id that does not fit is reported, never wrapped around
    tokens, _, top = encode.encode_batch([(b"ab", False)], "uint16", 50, bytes_tokenizer())
    assert tokens is None and top == 98
    shards = SplitShards("train", tmp_path, np.dtype(np.uint16), 50, keep_text=False)
    with pytest.raises(DataError, match="does not fit"):
        shards.write((None, 1, 98), Batch([(b"ab", False, True)], 2, 1), prep.NullProgress())
    shards.close()


def test_large_vocab_uses_uint32(data_ws, tmp_path, monkeypatch):
    """A tokenizer with more than 65536 ids gets a uint32 token file."""
    tok = bytes_tokenizer()

    class Wide:
        name, eot_token, vocab_size = "wide", 70000, 70001
        identity = {"name": "wide", "sha256": "f" * 64}

        def encode_array(self, text):
            return tok.encode_array(text) + 65000  # ids above uint16

    monkeypatch.setattr(prep, "get_tokenizer", lambda *a, **k: Wide())
    (tmp_path / "c.txt").write_text("hello")
    prepare_dataset(data_ws, str(tmp_path / "c.txt"), alias="wide")
    ds = open_dataset(data_ws, "wide")
    assert ds.meta["dtype"] == "uint32"
    assert ds.tokens("train").tolist() == [65000 + b for b in b"hello"]


# --------------------------------------------------------------------------- re-runs and atomicity


def test_idempotent_and_force(data_ws, wikitext_dir):
    src, _ = wikitext_dir
    first = prepare_dataset(data_ws, "wikitext-2", source=src, tokenizer="bytes")
    bin_file = first.path / "train.bin"
    mtime = bin_file.stat().st_mtime_ns
    again = prepare_dataset(data_ws, "wikitext-2", source=src, tokenizer="bytes")
    assert again.already_prepared and bin_file.stat().st_mtime_ns == mtime
    # a different tokenizer is not "the same dataset"
    with pytest.raises(UsageError, match="already prepared with tokenizer bytes"):
        _prepare_small(data_ws, src)
    forced = prepare_dataset(data_ws, "wikitext-2", source=src, tokenizer="bytes", force=True)
    assert not forced.already_prepared
    assert [p.name for p in data_ws.datasets_dir.iterdir()] == ["wikitext-2"]


def _prepare_small(ws, src):
    ws.ensure(ws.tokenizers_dir)
    write_ranks_file(ws.tokenizers_dir / "small.tiktoken")
    return prepare_dataset(ws, "wikitext-2", source=src, tokenizer="small")


def test_interrupted_prepare_leaves_old_dataset_intact(data_ws, wikitext_dir, monkeypatch):
    src, _ = wikitext_dir
    prepare_dataset(data_ws, "wikitext-2", source=src, tokenizer="bytes")
    before = {p.name: p.read_bytes() for p in data_ws.dataset_dir("wikitext-2").iterdir()}

    calls = {"n": 0}
    real_write = SplitShards.write

    def crash(self, *args, **kwargs):
        calls["n"] += 1
        if self.split == "validation":
            raise KeyboardInterrupt  # Ctrl-C in the middle of writing
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(SplitShards, "write", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(data_ws, "wikitext-2", source=src, tokenizer="bytes", force=True)
    assert calls["n"] > 1
    after = {p.name: p.read_bytes() for p in data_ws.dataset_dir("wikitext-2").iterdir()}
    assert after == before
    # what it finished stays for the next run to resume from, out of the dataset's way
    assert sorted(p.name for p in data_ws.datasets_dir.iterdir()) == [".partial-wikitext-2", "wikitext-2"]
    # and a first prepare that dies leaves no dataset at all
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(data_ws, "wikitext-2", source=src, tokenizer="bytes", alias="other")
    assert data_ws.dataset_names() == ["wikitext-2"]


def test_leftover_temp_dirs_are_ignored_and_cleaned(data_ws, wikitext_dir):
    src, _ = wikitext_dir
    dead = data_ws.datasets_dir / ".tmp-wikitext-2-999999999-abcd"  # a crashed prepare (no such pid)
    dead.mkdir(parents=True)
    (dead / "meta.json").write_text("{}")
    assert list_datasets(data_ws) == []
    prepare_dataset(data_ws, "wikitext-2", source=src, tokenizer="bytes")
    assert not dead.exists()
    assert [d.name for d in list_datasets(data_ws)] == ["wikitext-2"]


# --------------------------------------------------------------------------- local text


def test_text_folder_with_val_fraction(data_ws, tmp_path, byte_tokenizer):
    folder = tmp_path / "books"
    (folder / "sub").mkdir(parents=True)
    docs = [f"Document {i}: ünï text {'word ' * i}\n" for i in range(20)]
    for i, doc in enumerate(docs):
        (folder / ("sub" if i % 2 else "") / f"{i:02d}.txt").write_text(doc, encoding="utf-8")
    (folder / "ignored.bin").write_bytes(b"\x00\x01")
    result = prepare_dataset(data_ws, str(folder), tokenizer="bytes", val_fraction=0.25)
    assert result.name == "books"
    ds = open_dataset(data_ws, "books")
    assert ds.splits == ["train", "validation"]
    order = sorted(folder.rglob("*.txt"))
    texts = [p.read_text(encoding="utf-8") for p in order]
    held = [t for i, t in enumerate(texts) if int((i + 1) * 0.25) > int(i * 0.25)]
    kept = [t for t in texts if t not in held]
    assert len(held) == 5 and ds.split_meta("validation")["documents"] == 5
    for split, expected in (("train", kept), ("validation", held)):
        tokens = ds.tokens(split)
        assert byte_tokenizer.decode(tokens[tokens != 256]) == "".join(expected)
    # deterministic: the same split on a second run
    prepare_dataset(data_ws, str(folder), tokenizer="bytes", val_fraction=0.25, alias="again")
    assert np.array_equal(ds.tokens("validation"), open_dataset(data_ws, "again").tokens("validation"))


def test_text_file_with_separator(data_ws, tmp_path, byte_tokenizer):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one\n<doc>\ntwo\n<doc>\n<doc>\nthree", encoding="utf-8")
    prepare_dataset(data_ws, str(corpus), tokenizer="bytes", doc_separator="<doc>\n")
    ds = open_dataset(data_ws, "corpus")
    assert ds.split_meta("train")["documents"] == 3
    assert byte_tokenizer.decode(ds.tokens("train")) == "one\n<|endoftext|>two\n<|endoftext|>three"


def test_long_documents_are_streamed_in_pieces(tmp_path, monkeypatch, ranks_file):
    """A document larger than the piece size is cut only where its tokens do not change."""
    from lmforge.data import local, sources

    monkeypatch.setattr(local, "MAX_PIECE_CHARS", 64)
    monkeypatch.setattr(sources, "READ_BLOCK_CHARS", 50)
    text = "".join(f"Line {i} the theory\n  indented {i}\nx\n" for i in range(40))
    path = tmp_path / "big.txt"
    path.write_text(text)
    pieces = list(text_file_documents(path, None))
    assert len(pieces) > 5 and "".join(pieces) == text
    assert not isinstance(pieces[0], sources.Continuation)
    assert all(isinstance(p, sources.Continuation) for p in pieces[1:])
    tok = tokenizer_from_ranks_file(ranks_file)
    assert sum((tok.encode(p) for p in pieces), []) == tok.encode(text)
    assert safe_cut("ab\n cd", 6) == 0 and safe_cut("ab\ncd", 5) == 3


def test_empty_corpus(data_ws, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no text files"):
        prepare_dataset(data_ws, str(tmp_path / "empty"), tokenizer="bytes")
    (tmp_path / "blank.txt").write_text("")
    with pytest.raises(DataError, match="is empty"):
        prepare_dataset(data_ws, str(tmp_path / "blank.txt"), tokenizer="bytes")
    assert list_datasets(data_ws) == [] and not any(data_ws.datasets_dir.iterdir())


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"val_fraction": 1.5}, UsageError, "--val-fraction must be between 0 and 1"),
        ({"val_fraction": 0.0}, UsageError, "--val-fraction must be between 0 and 1"),
        ({"num_proc": 0}, UsageError, "--num-proc must be >= 1"),
        ({"splits": "train,bogus"}, UsageError, "unknown split 'bogus'"),
        ({"tokenizer": "nope"}, UsageError, "unknown tokenizer 'nope'"),
        ({"alias": ".hidden"}, UsageError, "invalid dataset name"),
        ({"val_fraction": 0.1, "name": "wikitext-2"}, UsageError, "WikiText has one"),
    ],
)
def test_bad_arguments(data_ws, tmp_path, kwargs, error, message):
    (tmp_path / "c.txt").write_text("hello")
    name = kwargs.pop("name", str(tmp_path / "c.txt"))
    with pytest.raises(error, match=message):
        prepare_dataset(data_ws, name, tokenizer=kwargs.pop("tokenizer", "bytes"), source=None, **kwargs)
    assert not data_ws.datasets_dir.exists() or not any(data_ws.datasets_dir.iterdir())


def test_unknown_name_and_source_errors(data_ws, tmp_path):
    with pytest.raises(UsageError, match="unknown dataset 'nonsense'"):
        prepare_dataset(data_ws, "nonsense", tokenizer="bytes")
    with pytest.raises(UsageError, match="does not exist"):
        prepare_dataset(data_ws, "wikitext-103", source=tmp_path / "nowhere", tokenizer="bytes")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.md").write_text("x")
    with pytest.raises(UsageError, match="holds no WikiText") as exc:
        prepare_dataset(data_ws, "wikitext-103", source=tmp_path / "junk", tokenizer="bytes")
    assert "--source" in exc.value.hint


def test_hub_unreachable_fails_fast_with_source_hint(data_ws, monkeypatch):
    from lmforge.data import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_hub_reachable", lambda timeout=5.0: "huggingface.co: no network")
    with pytest.raises(DataError) as exc:
        prepare_dataset(data_ws, "wikitext-103", tokenizer="bytes")
    assert "cannot reach the Hugging Face Hub" in exc.value.message
    assert "--source DIR" in exc.value.hint and "wiki.train.raw" in exc.value.hint


def test_hub_offline_mode_error(data_ws):
    """conftest sets HF_HUB_OFFLINE=1: `datasets` answers from its cache at once (here: nothing)."""
    with pytest.raises(DataError) as exc:
        prepare_dataset(data_ws, "wikitext-2", tokenizer="bytes")
    assert "--source" in exc.value.hint and "HF_HUB_OFFLINE is set" in exc.value.hint


# --------------------------------------------------------------------------- the reader


def test_open_unknown_dataset_lists_known(data_ws, wikitext_dir):
    with pytest.raises(NotFoundError, match="no dataset is prepared yet"):
        open_dataset(data_ws, "wikitext-103")
    prepare_dataset(data_ws, "wikitext-2", source=wikitext_dir[0], tokenizer="bytes")
    with pytest.raises(NotFoundError) as exc:
        open_dataset(data_ws, "wikitext-103")
    assert "prepared: wikitext-2" in exc.value.message
    assert exc.value.hint == "prepare it with: lmforge data prepare wikitext-103"
    assert exc.value.exit_code == 2


def test_truncated_and_corrupt_token_files(data_ws, wikitext_dir):
    prepare_dataset(data_ws, "wikitext-2", source=wikitext_dir[0], tokenizer="bytes")
    path = data_ws.dataset_dir("wikitext-2")
    with open(path / "train.bin", "r+b") as f:
        f.truncate(f.seek(0, 2) - 1)  # odd-sized
    ds = open_dataset(data_ws, "wikitext-2")
    with pytest.raises(DataError, match="truncated or corrupt") as exc:
        ds.tokens("train")
    assert "--force" in exc.value.hint
    bad = np.array(ds.tokens("test"))
    bad[3] = 300  # outside the vocabulary of 257
    bad.tofile(path / "test.bin")
    with pytest.raises(DataError, match="outside the vocabulary"):
        open_dataset(data_ws, "wikitext-2").tokens("test")
    (path / "validation.bin").unlink()
    with pytest.raises(DataError, match="missing"):
        ds.tokens("validation")
    meta = json.loads((path / "meta.json").read_text())
    meta["format_version"] = 99
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="format version 99"):
        open_dataset(data_ws, "wikitext-2")
    errors = []
    assert list_datasets(data_ws, errors) == [] and errors[0][0] == "wikitext-2"


def test_check_tokenizer_match():
    a = {"name": "gpt2", "sha256": "a" * 64}
    check_tokenizer_match(a, dict(a), "checkpoint x")
    with pytest.raises(UsageError) as exc:
        check_tokenizer_match(a, {"name": "bytes", "sha256": "b" * 64}, "checkpoint runs/x/best")
    assert (
        "tokenizer mismatch" in exc.value.message and "checkpoint runs/x/best uses bytes" in exc.value.message
    )


def test_write_wikitext_fixture_is_like_the_real_thing(tmp_path):
    articles = write_wikitext(tmp_path, sizes=(("test", 3),))
    text = (tmp_path / "wiki.test.raw").read_text()
    assert text.startswith(" \n = ") and text.count("\n = = ") >= 3 and len(articles["test"]) == 3


def test_generic_parquet_source_one_document_per_row(data_ws, tmp_path, byte_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "hub-copy"
    (folder / "test").mkdir(parents=True)
    rows = ["first doc", "", "second doc ü", None, "third"]
    pq.write_table(pa.table({"content": rows}), folder / "train-00000-of-00001.parquet")
    pq.write_table(pa.table({"content": ["t1", "t2"]}), folder / "test" / "0000.parquet")
    with pytest.raises(UsageError, match="no column 'text'.*--text-column"):
        prepare_dataset(data_ws, "owner/ds", source=folder, tokenizer="bytes")
    result = prepare_dataset(data_ws, "owner/ds", source=folder, tokenizer="bytes", text_column="content")
    assert result.name == "owner-ds" and any("--val-fraction" in n for n in result.notes)
    ds = open_dataset(data_ws, "owner-ds")
    assert ds.splits == ["train", "test"]
    assert byte_tokenizer.decode(ds.tokens("train")) == "first doc<|endoftext|>second doc ü<|endoftext|>third"
    assert ds.split_meta("test")["documents"] == 2


def test_count_words_is_str_split():
    import random

    from lmforge.data.encode import count_words

    spaces = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    alphabet = spaces + list("ab é€😀–“\u200b")
    rng = random.Random(0)
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert count_words(text.encode()) == len(text.split()), repr(text)


def test_tokenizer_file_is_remembered_in_the_workspace(data_ws, wikitext_dir, ranks_file):
    """A ranks file given once to prepare is copied into tokenizers/, so later commands
    (train samples, eval, generate) find the tokenizer without the flag."""
    src, _ = wikitext_dir
    result = prepare_dataset(data_ws, "wikitext-2", source=src, tokenizer="small", tokenizer_file=ranks_file)
    copy = data_ws.tokenizers_dir / "small.tiktoken"
    assert copy.read_bytes() == ranks_file.read_bytes()
    assert any("copied the tokenizer file" in note for note in result.notes)
    from lmforge.data.tokenizer import get_tokenizer, tokenizer_from_identity

    identity = open_dataset(data_ws, "wikitext-2").tokenizer_identity
    assert tokenizer_from_identity(identity, workspace=data_ws).identity == identity
    assert get_tokenizer("small", workspace=data_ws).identity == identity
    copy.write_bytes(copy.read_bytes())  # an existing copy is never overwritten
    before = copy.stat().st_mtime_ns
    prepare_dataset(
        data_ws, "wikitext-2", source=src, tokenizer="small", tokenizer_file=ranks_file, alias="again"
    )
    assert copy.stat().st_mtime_ns == before
