"""Local corpora of data files (parquet, JSON lines, compressed, text; folders and globs),
token budgets, validation held out by documents, and the Hub's streaming path (faked)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from lmforge.data import encode, hub
from lmforge.data.prepare import prepare_dataset
from lmforge.data.shards import SplitShards
from lmforge.data.store import open_dataset
from lmforge.errors import DataError, UsageError

EOT = 256  # the byte tokenizer's end-of-text


def _docs(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "épsilon", "zeta"]
    return [f"doc {seed}-{i}: " + " ".join(rng.choice(words, rng.integers(5, 40))) for i in range(n)]


def _split_docs(tokens: np.ndarray) -> list[str]:
    raw = bytes(tokens.astype(np.uint8)) if not (tokens == EOT).any() else None
    if raw is not None:
        return [raw.decode("utf-8")]
    out, start = [], 0
    for i in np.flatnonzero(tokens == EOT).tolist() + [len(tokens)]:
        out.append(bytes(tokens[start:i].astype(np.uint8)).decode("utf-8"))
        start = i + 1
    return out


@pytest.fixture(autouse=True)
def _small_batches(monkeypatch):
    monkeypatch.setattr(encode, "BATCH_BYTES", 200)


@pytest.fixture
def parquet_dir(tmp_path):
    folder = tmp_path / "crawl"
    folder.mkdir()
    docs = _docs(60, 1)
    for k in range(3):  # names that are no split: all of it is train
        table = pa.table({"content": docs[k * 20 : (k + 1) * 20], "id": list(range(20))})
        pq.write_table(table, folder / f"part-{k:03d}.parquet", row_group_size=7)
    return folder, docs


def test_parquet_with_budget_and_validation_held_out_by_documents(data_ws, parquet_dir):
    folder, docs = parquet_dir
    result = prepare_dataset(
        data_ws, str(folder), tokenizer="bytes", text_column="content", max_tokens=1500, val_tokens=400
    )
    ds = open_dataset(data_ws, "crawl")
    assert ds.splits == ["train", "validation"]
    val = _split_docs(np.asarray(ds.tokens("validation")))
    train = _split_docs(np.asarray(ds.tokens("train")))
    # validation: whole documents from the start, at least the tokens asked for; train: the next ones
    assert val == docs[: len(val)] and ds.split_meta("validation")["tokens"] >= 400
    assert train == docs[len(val) : len(val) + len(train)]
    assert 1500 <= ds.split_meta("train")["tokens"] < 1500 + 400 and len(val) + len(train) < len(docs)
    assert ds.meta["prepare"]["--val-tokens"] == 400 and not result.notes
    # deterministic: the same split again
    prepare_dataset(
        data_ws,
        str(folder),
        tokenizer="bytes",
        text_column="content",
        max_tokens=1500,
        val_tokens=400,
        alias="b",
    )
    assert np.array_equal(open_dataset(data_ws, "b").tokens("validation"), ds.tokens("validation"))


def test_a_budget_larger_than_the_corpus_keeps_it_all_and_says_so(data_ws, parquet_dir):
    folder, docs = parquet_dir
    result = prepare_dataset(data_ws, str(folder), tokenizer="bytes", text_column="content", max_tokens=10**9)
    assert _split_docs(np.asarray(open_dataset(data_ws, "crawl").tokens("train"))) == docs
    assert any("fewer than the 1,000,000,000 asked for" in n for n in result.notes)
    with pytest.raises(DataError, match="--val-tokens 1,000,000 takes all of"):
        prepare_dataset(
            data_ws, str(folder), tokenizer="bytes", text_column="content", val_tokens=10**6, alias="x"
        )
    assert not data_ws.dataset_dir("x").exists()


@pytest.mark.parametrize("kill_after", [1, 3])  # validation's last shard (its budget); train's second
def test_resume_with_held_out_validation(data_ws, parquet_dir, monkeypatch, kill_after):
    folder, _ = parquet_dir
    kwargs = dict(tokenizer="bytes", text_column="content", val_tokens=300, shard_tokens=500)
    prepare_dataset(data_ws, str(folder), alias="straight", **kwargs)
    real_cut = SplitShards._cut
    count = {"n": 0}

    def dying_cut(self):
        real_cut(self)
        count["n"] += 1
        if count["n"] == kill_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(SplitShards, "_cut", dying_cut)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(data_ws, str(folder), alias="again", **kwargs)
    monkeypatch.setattr(SplitShards, "_cut", real_cut)
    prepare_dataset(data_ws, str(folder), alias="again", **kwargs)
    a, b = open_dataset(data_ws, "straight"), open_dataset(data_ws, "again")
    for split in ("train", "validation"):
        assert np.array_equal(np.asarray(a.tokens(split)), np.asarray(b.tokens(split)))


def test_glob_of_jsonl_compressed_and_text_files(data_ws, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    docs = _docs(12, 2)
    lines = [json.dumps({"text": d, "n": i}) + "\n" for i, d in enumerate(docs)]
    (folder / "a.jsonl").write_text("".join(lines[:4]), encoding="utf-8")
    with gzip.open(folder / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("".join(lines[4:8]))
    (folder / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress("".join(lines[8:]).encode()))
    (folder / "d.txt").write_text("a text file is one document", encoding="utf-8")
    (folder / "val.jsonl").write_text(json.dumps({"text": "held out"}) + "\n", encoding="utf-8")
    (folder / "notes.md").write_text("not data", encoding="utf-8")
    prepare_dataset(data_ws, str(folder / "*"), tokenizer="bytes", alias="mixed")
    ds = open_dataset(data_ws, "mixed")
    assert _split_docs(np.asarray(ds.tokens("train"))) == [*docs, "a text file is one document"]
    assert _split_docs(np.asarray(ds.tokens("validation"))) == ["held out"]  # 'val' in its name
    # the folder itself reads the same
    prepare_dataset(data_ws, str(folder), tokenizer="bytes", alias="folder")
    assert np.array_equal(open_dataset(data_ws, "folder").tokens("train"), ds.tokens("train"))


def test_bad_files_and_columns_are_named(data_ws, tmp_path, parquet_dir):
    folder, _ = parquet_dir
    with pytest.raises(UsageError, match="has no column 'text'") as exc:
        prepare_dataset(data_ws, str(folder), tokenizer="bytes")
    assert "part-000.parquet" in exc.value.message and "--text-column" in exc.value.hint
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jsonl").write_text('{"text": "fine"}\n{"text": broken\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"a.jsonl:2 is not a JSON line"):
        prepare_dataset(data_ws, str(bad), tokenizer="bytes")
    (bad / "a.jsonl").write_text('{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(UsageError, match="has no column 'text' \\(its first record has: body\\)"):
        prepare_dataset(data_ws, str(bad), tokenizer="bytes")
    with pytest.raises(UsageError, match="matches no data files"):
        prepare_dataset(data_ws, str(tmp_path / "nothing-*.jsonl"), tokenizer="bytes")
    with pytest.raises(UsageError, match="--subset is for Hugging Face datasets"):
        prepare_dataset(data_ws, str(folder), tokenizer="bytes", subset="sample-10BT")
    assert [p.name for p in data_ws.datasets_dir.iterdir()] == []  # nothing left behind


class _FakeStream:
    """What ``datasets.load_dataset(..., streaming=True)`` gives per split: rows as dicts."""

    def __init__(self, rows):
        self.rows = rows
        self.column_names = list(rows[0])

    def __iter__(self):
        return iter(self.rows)


def test_hub_datasets_are_streamed_with_their_subset(data_ws, monkeypatch):
    import datasets

    calls = []
    docs = _docs(30, 3)

    def fake_load(dataset_id, config=None, streaming=False):
        calls.append((dataset_id, config, streaming))
        return {"train": _FakeStream([{"text": d, "url": "u"} for d in docs])}

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.setattr(hub, "hub_offline", lambda: True)  # no reachability probe
    prepare_dataset(
        data_ws, "owner/web", tokenizer="bytes", subset="sample-10BT", max_tokens=600, val_tokens=200
    )
    assert calls == [("owner/web", "sample-10BT", True)]
    ds = open_dataset(data_ws, "web")
    val, train = (_split_docs(np.asarray(ds.tokens(s))) for s in ("validation", "train"))
    assert val + train == docs[: len(val) + len(train)] and ds.split_meta("train")["tokens"] >= 600
    assert "(sample-10BT)" in ds.split_meta("train")["source"]
    with pytest.raises(UsageError, match="owner/web has no column 'body'"):
        prepare_dataset(data_ws, "owner/web", tokenizer="bytes", text_column="body", alias="other")


def test_a_subset_that_does_not_exist_is_one_line(data_ws, monkeypatch):
    import datasets

    def fake_load(dataset_id, config=None, streaming=False):
        raise ValueError(f"BuilderConfig '{config}' not found. Available: ['sample-10BT', 'default']")

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.setattr(hub, "hub_offline", lambda: True)
    with pytest.raises(DataError, match=r"cannot load owner/web \(sample-1BT\) from the Hub") as exc:
        prepare_dataset(data_ws, "owner/web", tokenizer="bytes", subset="sample-1BT")
    assert "Available: ['sample-10BT'" in exc.value.message and "--subset" in exc.value.hint
    assert not data_ws.datasets_dir.exists()  # nothing made
