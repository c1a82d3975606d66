"""llm.c / modded-nanogpt shards: export then import gives the same tokens; bad headers,
sizes and ids are named and leave nothing half-imported."""

from __future__ import annotations

import numpy as np
import pytest
from data_fixtures import write_wikitext

from lmforge.data import encode
from lmforge.data.llmc import HEADER_BYTES, MAGIC, export_llmc, import_llmc, read_header
from lmforge.data.prepare import prepare_dataset
from lmforge.data.store import open_dataset
from lmforge.data.tokenizer import bytes_tokenizer
from lmforge.errors import DataError, UsageError


@pytest.fixture
def sharded(data_ws, tmp_path, monkeypatch):
    monkeypatch.setattr(encode, "BATCH_BYTES", 300)
    write_wikitext(tmp_path / "src", sizes=(("train", 16), ("validation", 4), ("test", 2)))
    prepare_dataset(data_ws, "wikitext-2", source=tmp_path / "src", tokenizer="bytes", shard_tokens=2500)
    return open_dataset(data_ws, "wikitext-2")


def _write_shard(path, tokens, magic=MAGIC, version=1, count=None):
    header = np.zeros(256, dtype="<i4")
    header[:3] = (magic, version, len(tokens) if count is None else count)
    path.write_bytes(header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes())


def test_export_then_import_round_trip(data_ws, sharded, tmp_path):
    out = tmp_path / "llmc"
    written = export_llmc(sharded, out)
    names = [p.name for p in written]
    assert "wikitext-2_val_000000.bin" in names and "wikitext-2_train_000001.bin" in names
    assert sum(n.startswith("wikitext-2_train_") for n in names) == len(sharded.shard_entries("train")) > 1
    first = out / "wikitext-2_train_000001.bin"
    assert read_header(first) == sharded.shard_entries("train")[0]["tokens"]
    header = np.fromfile(first, dtype="<i4", count=256)
    assert header[:3].tolist() == [20240520, 1, read_header(first)] and not header[3:].any()

    back = import_llmc(data_ws, out, "back", bytes_tokenizer())
    assert back.splits == sharded.splits
    for split in sharded.splits:
        assert np.array_equal(np.asarray(back.tokens(split)), np.asarray(sharded.tokens(split)))
    assert back.split_meta("train")["bytes"] is None
    with pytest.raises(UsageError, match="not an empty folder"):
        export_llmc(sharded, out)


def test_bad_shards_are_named_and_nothing_is_imported(data_ws, tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    _write_shard(folder / "web_val_000000.bin", [256, 1, 2, 3])
    _write_shard(folder / "web_train_000001.bin", [256, 5, 6, 7, 8])
    _write_shard(folder / "web_train_000002.bin", [256, 9], magic=12345)
    with pytest.raises(DataError, match=r"web_train_000002.bin is not an llm.c shard: magic number 12345"):
        import_llmc(data_ws, folder, "web", bytes_tokenizer())
    _write_shard(folder / "web_train_000002.bin", [256, 9], count=3)
    with pytest.raises(DataError, match=r"web_train_000002.bin is truncated or corrupt"):
        import_llmc(data_ws, folder, "web", bytes_tokenizer())
    _write_shard(folder / "web_train_000002.bin", [256, 9], version=2)
    with pytest.raises(DataError, match="version 2"):
        import_llmc(data_ws, folder, "web", bytes_tokenizer())
    (folder / "web_train_000002.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="shorter than its 1024-byte header"):
        import_llmc(data_ws, folder, "web", bytes_tokenizer())
    _write_shard(folder / "web_train_000002.bin", [256, 900])  # an id outside the byte vocabulary
    with pytest.raises(DataError, match="holds token id 900"):
        import_llmc(data_ws, folder, "web", bytes_tokenizer())
    assert [p.name for p in data_ws.datasets_dir.iterdir()] == []  # nothing half-imported
    _write_shard(folder / "web_train_000002.bin", [256, 9])
    ds = import_llmc(data_ws, folder, "web", bytes_tokenizer())
    assert np.asarray(ds.tokens("train")).tolist() == [256, 5, 6, 7, 8, 256, 9]
    assert ds.split_meta("train")["documents"] == 2 and ds.tokens("validation").tolist() == [256, 1, 2, 3]
    assert HEADER_BYTES == 1024


def test_cli_import_export(cli, tmp_path, workspace_dir):
    folder = tmp_path / "fineweb10B"
    folder.mkdir()
    _write_shard(folder / "fineweb_val_000000.bin", [256] + list(range(40)))
    _write_shard(folder / "fineweb_train_000001.bin", [256] + list(range(100, 180)))
    result = cli("data", "import", str(folder), "--format", "llmc", "--tokenizer", "bytes")
    assert result.exit_code == 0, result.output
    assert "fineweb10B" in result.stderr
    info = cli("data", "info", "fineweb10B")
    assert info.exit_code == 0 and "validation" in info.stdout
    out = tmp_path / "out"
    exported = cli("data", "export", "fineweb10B", "--format", "llmc", "--out", str(out))
    assert exported.exit_code == 0, exported.output
    assert (out / "fineweb10B_train_000001.bin").read_bytes() == (
        folder / "fineweb_train_000001.bin"
    ).read_bytes()
    again = cli("data", "import", str(folder), "--format", "llmc", "--tokenizer", "bytes")
    assert again.exit_code == 2 and "already exists" in again.stderr
    bad = cli("data", "import", str(folder), "--format", "npy")
    assert bad.exit_code == 2 and "unknown format" in bad.output
