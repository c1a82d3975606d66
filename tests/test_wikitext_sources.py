"""Where a WikiText copy may sit (--source): the Hub's parquet layout at every level a
user may point at, and a user's mistake in --source answered with exit code 2."""

from __future__ import annotations

import numpy as np
import pytest
from data_fixtures import SPLIT_FILES, write_wikitext

from lmforge.data.prepare import prepare_dataset
from lmforge.data.store import open_dataset
from lmforge.errors import UsageError


def _write_hub_parquet(root, src, configs=("wikitext-2-raw-v1", "wikitext-103-raw-v1"), splits=None):
    """The Hub repository Salesforce/wikitext as a download leaves it:
    ``root/{config}/{split}-00000-of-00001.parquet``, one row per line, blank lines as ""."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for config in configs:
        folder = root / config
        folder.mkdir(parents=True)
        for split in splits or SPLIT_FILES:
            lines = (src / SPLIT_FILES[split]).read_text(encoding="utf-8").split("\n")[:-1]
            rows = ["" if line == " " else line + "\n" for line in lines]
            pq.write_table(pa.table({"text": rows}), folder / f"{split}-00000-of-00001.parquet")
    return root


@pytest.fixture
def hub_copy(tmp_path):
    src = tmp_path / "raw"
    write_wikitext(src)
    # like ../shared/data/hf-parquet/wikitext: only validation and test
    root = _write_hub_parquet(tmp_path / "hf-parquet" / "wikitext", src, splits=("validation", "test"))
    return src, root


@pytest.mark.parametrize("level", ["root", "above", "config"])
def test_parquet_layout_found_from_every_level(data_ws, hub_copy, level):
    src, root = hub_copy
    source = {"root": root, "above": root.parent, "config": root / "wikitext-2-raw-v1"}[level]
    prepare_dataset(
        data_ws, "wikitext-2", source=src, splits="validation,test", tokenizer="bytes", alias="raw"
    )
    result = prepare_dataset(
        data_ws, "wikitext-2", source=source, splits="validation,test", tokenizer="bytes"
    )
    assert result.meta["source"]["description"] == str(root / "wikitext-2-raw-v1")
    raw, pqt = open_dataset(data_ws, "raw"), open_dataset(data_ws, "wikitext-2")
    for split in ("validation", "test"):
        assert np.array_equal(raw.tokens(split), pqt.tokens(split))


def test_parquet_root_without_the_config_names_what_it_has(data_ws, hub_copy):
    _, root = hub_copy
    with pytest.raises(UsageError) as exc:
        prepare_dataset(data_ws, "wikitext-2-v1", source=root, splits="validation,test", tokenizer="bytes")
    assert "wikitext-2-v1/*.parquet" in exc.value.message
    assert "it has parquet files for wikitext-103-raw-v1, wikitext-2-raw-v1" in exc.value.message


def test_parquet_split_subfolders_layout(data_ws, tmp_path):
    """The parquet-conversion branch's ``{config}/{split}/0000.parquet``, from the root."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for split in ("validation", "test"):
        folder = tmp_path / "repo" / "wikitext-2-raw-v1" / split
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"text": ["", " = T = \n", "", " a b . \n"]}), folder / "0000.parquet")
    result = prepare_dataset(
        data_ws, "wikitext-2", source=tmp_path / "repo", splits="validation,test", tokenizer="bytes"
    )
    assert result.meta["splits"]["test"]["documents"] == 1


def test_missing_train_file_is_a_usage_error_exit_2(cli, tmp_path, workspace_dir):
    src = tmp_path / "raw"
    write_wikitext(src)
    (src / "wiki.train.raw").unlink()
    result = cli("data", "prepare", "wikitext-2", "--source", str(src), "--tokenizer", "bytes")
    assert result.exit_code == 2, result.output
    assert "is missing wiki.train.raw (split train)" in result.stderr
    assert "--splits validation,test" in result.stderr
    assert not (workspace_dir / "datasets" / "wikitext-2").exists()


def test_source_without_wikitext_exits_2(cli, tmp_path):
    (tmp_path / "junk").mkdir()
    result = cli("data", "prepare", "wikitext-2", "--source", str(tmp_path / "junk"), "--tokenizer", "bytes")
    assert result.exit_code == 2
    assert "holds no WikiText" in result.stderr
