"""Sharded, resumable prepares and reading sharded splits: shards add up to the one-file
dataset, an interrupted prepare resumes to the same bytes, windows stay inside a shard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import write_wikitext

from lmforge.data import encode
from lmforge.data.dataset import RandomWindowDataset, TrainLoader, WikiTextDataset
from lmforge.data.prepare import prepare_dataset
from lmforge.data.shards import SplitShards
from lmforge.data.store import open_dataset
from lmforge.data.tokens import ShardedTokens
from lmforge.errors import DataError

SHARD = 2000  # tokens: the train split below (~13k byte tokens) makes 7 shards


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "src"
    write_wikitext(folder, sizes=(("train", 24), ("validation", 6), ("test", 3)))
    return folder


@pytest.fixture(autouse=True)
def _small_batches(monkeypatch):
    monkeypatch.setattr(encode, "BATCH_BYTES", 300)  # many batches, so shards end mid-split


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.name != "meta.json"}


def _meta(path: Path) -> dict:
    meta = json.loads((path / "meta.json").read_text())
    meta.pop("created")
    return meta


def test_shards_add_up_to_the_one_file_dataset(data_ws, source):
    prepare_dataset(data_ws, "wikitext-2", source=source, tokenizer="bytes", alias="whole")
    prepare_dataset(
        data_ws, "wikitext-2", source=source, tokenizer="bytes", alias="parts", shard_tokens=SHARD
    )
    whole, parts = open_dataset(data_ws, "whole"), open_dataset(data_ws, "parts")
    shards = parts.shard_entries("train")
    assert len(shards) > 3 and [s["file"] for s in shards][:2] == ["train-00000.bin", "train-00001.bin"]
    assert (
        all(s["tokens"] >= SHARD for s in shards[:-1])
        and sum(s["tokens"] for s in shards) == (parts.split_meta("train")["tokens"])
    )
    tokens = parts.tokens("train")
    assert isinstance(tokens, ShardedTokens) and len(tokens.shards) == len(shards)
    assert np.array_equal(np.asarray(tokens), whole.tokens("train"))
    for split in ("train", "validation", "test"):
        a, b = whole.split_meta(split), parts.split_meta(split)
        for key in ("tokens", "documents", "bytes", "words"):
            assert a[key] == b[key]
        assert np.array_equal(np.asarray(parts.tokens(split)), whole.tokens(split))
    # the evaluation splits keep their whole text and documents, checked against the sha256
    assert parts.documents("validation") == whole.documents("validation")
    # a one-shard split is the one file it always was, with its checksum
    assert (
        whole.shard_entries("train")[0]["file"] == "train.bin" and "sha256" in whole.shard_entries("train")[0]
    )
    names = sorted(p.name for p in parts.path.iterdir())
    assert [n for n in names if n.startswith("train")] == [s["file"] for s in shards] + ["train.docs.npy"]
    assert not [n for n in names if n.endswith((".partial", "-00000.text", "-00000.docs.npy"))]


@pytest.mark.parametrize("kill_after", [1, 3, 6])
def test_resume_after_a_kill_equals_an_uninterrupted_prepare(data_ws, source, monkeypatch, kill_after):
    prepare_dataset(
        data_ws, "wikitext-2", source=source, tokenizer="bytes", alias="straight", shard_tokens=SHARD
    )
    real_cut = SplitShards._cut
    cuts = {"n": 0}

    def dying_cut(self):
        real_cut(self)
        cuts["n"] += 1
        if cuts["n"] == kill_after:
            raise KeyboardInterrupt  # the process dies right after shard k is on disk

    monkeypatch.setattr(SplitShards, "_cut", dying_cut)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(
            data_ws, "wikitext-2", source=source, tokenizer="bytes", alias="again", shard_tokens=SHARD
        )
    assert not data_ws.dataset_dir("again").exists() and (data_ws.datasets_dir / ".partial-again").is_dir()
    monkeypatch.setattr(SplitShards, "_cut", real_cut)

    progress = json.loads((data_ws.datasets_dir / ".partial-again" / "progress.json").read_text())
    parts = progress["splits"].values()
    finished = sum(shard["bytes"] for part in parts for shard in part.get("shards", []))
    finished += sum(part["done"]["bytes"] for part in parts if "done" in part)
    assert finished > 0
    encoded = []
    real_submit = encode.Encoder.submit

    def counting_submit(self, items, *args):
        encoded.append(sum(len(raw) for raw, *_ in items))
        return real_submit(self, items, *args)

    monkeypatch.setattr(encode.Encoder, "submit", counting_submit)
    result = prepare_dataset(
        data_ws, "wikitext-2", source=source, tokenizer="bytes", alias="again", shard_tokens=SHARD
    )
    assert any("resumed" in n for n in result.notes)
    straight, again = data_ws.dataset_dir("straight"), data_ws.dataset_dir("again")
    assert _files(again) == _files(straight)  # byte-identical shards, text and offsets
    a, b = _meta(straight), _meta(again)
    assert a["splits"] == b["splits"]
    assert not (data_ws.datasets_dir / ".partial-again").exists()
    # the finished shards were not encoded again: only the rest was
    assert sum(encoded) == sum(part["bytes"] for part in a["splits"].values()) - finished


def test_a_changed_source_starts_afresh(data_ws, source, monkeypatch):
    real_cut = SplitShards._cut

    def dying_cut(self):
        real_cut(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(SplitShards, "_cut", dying_cut)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(data_ws, "wikitext-2", source=source, tokenizer="bytes", shard_tokens=SHARD)
    monkeypatch.setattr(SplitShards, "_cut", real_cut)
    with open(source / "wiki.train.raw", "ab") as f:
        f.write(b" = Added = \n \n more text . \n")
    result = prepare_dataset(data_ws, "wikitext-2", source=source, tokenizer="bytes", shard_tokens=SHARD)
    assert not any("resumed" in n for n in result.notes)
    prepare_dataset(
        data_ws, "wikitext-2", source=source, tokenizer="bytes", shard_tokens=SHARD, alias="fresh"
    )
    assert _files(data_ws.dataset_dir("wikitext-2")) == _files(data_ws.dataset_dir("fresh"))


CHILD = r"""
import sys, time
from lmforge.data import encode
from lmforge.data.prepare import prepare_dataset
from lmforge.data.shards import SplitShards
from lmforge.workspace import Workspace
encode.BATCH_BYTES = 300
real_cut = SplitShards._cut
def slow_cut(self):
    real_cut(self)
    if len(self.shards) == 3 and self.split == "train":
        print("3", flush=True)
        time.sleep(600)
SplitShards._cut = slow_cut
prepare_dataset(Workspace.resolve(sys.argv[1]), "wikitext-2", source=sys.argv[2], tokenizer="bytes",
                shard_tokens=int(sys.argv[3]))
"""


def test_sigkill_then_the_same_command_resumes(data_ws, source):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data_ws.root), str(source), str(SHARD)],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout.readline().strip() == b"3"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    partial = data_ws.datasets_dir / ".partial-wikitext-2"
    assert len(json.loads((partial / "progress.json").read_text())["splits"]["train"]["shards"]) == 3
    from lmforge.data.staging import unfinished_prepares

    assert unfinished_prepares(data_ws) == ["wikitext-2"]
    result = prepare_dataset(data_ws, "wikitext-2", source=source, tokenizer="bytes", shard_tokens=SHARD)
    assert any("resumed" in n for n in result.notes)
    prepare_dataset(
        data_ws, "wikitext-2", source=source, tokenizer="bytes", shard_tokens=SHARD, alias="straight"
    )
    assert _files(data_ws.dataset_dir("wikitext-2")) == _files(data_ws.dataset_dir("straight"))


def test_a_changed_shard_is_refused(data_ws, source):
    prepare_dataset(data_ws, "wikitext-2", source=source, tokenizer="bytes", shard_tokens=SHARD)
    shard = data_ws.dataset_dir("wikitext-2") / "train-00002.bin"
    data = bytearray(shard.read_bytes())
    data[10:12] = b"\x41\x00" if data[10:12] != b"\x41\x00" else b"\x42\x00"
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="train-00002.bin changed after it was prepared") as exc:
        open_dataset(data_ws, "wikitext-2").tokens("train")
    assert "--force" in exc.value.hint


# --------------------------------------------------------------------------- reading shards


def _sharded(lengths, seed=0):
    rng = np.random.default_rng(seed)
    parts = [rng.integers(0, 250, n).astype(np.uint16) for n in lengths]
    return ShardedTokens(parts), np.concatenate(parts)


def test_sharded_tokens_index_like_one_array():
    tokens, whole = _sharded([7, 1, 12, 5])
    assert len(tokens) == len(whole) == 25
    for key in (slice(0, 25), slice(3, 9), slice(6, 8), slice(20, 30), slice(5, 5), slice(1, 20, 3)):
        assert np.array_equal(tokens[key], whole[key])
    index = np.array([[0, 7, 8, 24], [-1, 19, 3, 20]])
    assert np.array_equal(tokens[index], whole[index])
    assert tokens[7] == whole[7] and tokens[-1] == whole[-1]
    assert np.array_equal(np.asarray(tokens, dtype=np.int64), whole.astype(np.int64))


def test_windows_never_straddle_two_shards():
    tokens, whole = _sharded([40, 3, 25, 33])
    block = 8
    sliding = WikiTextDataset(tokens, block, stride=8)
    ends = np.cumsum([40, 3, 25, 33])
    starts = sliding.starts(np.arange(len(sliding)))
    for s in starts:
        shard = np.searchsorted(ends, s, side="right")
        assert s + block + 1 <= ends[shard]  # the whole window inside its shard
    # every token of every shard long enough is in some window (tails end-aligned per shard)
    covered = np.zeros(len(whole), bool)
    for s in starts:
        covered[s : s + block + 1] = True
    assert covered[:40].all() and not covered[40:43].any() and covered[43:].all()
    x, y = sliding.get_batch([0, len(sliding) - 1])
    assert torch.equal(x[1], torch.from_numpy(whole[-block - 1 : -1].astype(np.int64)))
    random = RandomWindowDataset(tokens, block, seed=3, num_samples=500)
    starts = random.starts(np.arange(500))
    shard = np.searchsorted(ends, starts, side="right")
    assert (starts + block + 1 <= ends[shard]).all() and len(set(shard.tolist())) == 3


def test_one_shard_windows_are_the_one_file_windows():
    tokens, whole = _sharded([301])
    for a, b in (
        (WikiTextDataset(tokens, 16, 5), WikiTextDataset(whole, 16, 5)),
        (RandomWindowDataset(tokens, 16, seed=1), RandomWindowDataset(whole, 16, seed=1)),
    ):
        assert len(a) == len(b) and np.array_equal(a.starts(np.arange(len(a))), b.starts(np.arange(len(b))))


@pytest.mark.parametrize("sampling", ["sliding", "random"])
def test_loader_over_shards_resumes_bitwise(sampling):
    tokens, _ = _sharded([200, 90, 150])
    make = (
        (lambda: WikiTextDataset(tokens, 16, 8))
        if sampling == "sliding"
        else (lambda: RandomWindowDataset(tokens, 16, seed=5))
    )
    straight = TrainLoader(make(), 4, seed=1)
    expected = [next(straight) for _ in range(20)]
    first = TrainLoader(make(), 4, seed=1)
    for _ in range(7):
        next(first)
    state = first.state_dict()
    assert {"epoch", "batch", "shard", "offset"} <= set(state)
    resumed = TrainLoader(make(), 4, seed=1)
    resumed.load_state_dict(state)
    for (x, y), (ex, ey) in zip([next(resumed) for _ in range(13)], expected[7:], strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)


# --------------------------------------------------------------------------- evaluation and training


def test_sharded_eval_equals_the_one_file_eval(data_ws, source):
    from lmforge.config import ModelConfig
    from lmforge.eval.evaluate import evaluate
    from lmforge.eval.options import EvalOptions
    from lmforge.model import GPT

    prepare_dataset(data_ws, "wikitext-2", source=source, tokenizer="bytes", alias="whole")
    prepare_dataset(data_ws, "wikitext-2", source=source, tokenizer="bytes", alias="parts", shard_tokens=800)
    parts = open_dataset(data_ws, "parts")
    assert len(parts.shard_entries("validation")) > 1
    torch.manual_seed(0)
    model = GPT(
        ModelConfig(vocab_size=257, block_size=32, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    ).eval()
    rows = [
        evaluate(
            model,
            open_dataset(data_ws, name),
            # max_tokens: across the first shard boundary (800 tokens)
            EvalOptions(block_size=32, stride=16, batch_size=64, max_tokens=1500),
            splits=["validation"],
        )
        for name in ("whole", "parts")
    ]
    assert rows[0][0].loss == rows[1][0].loss and rows[0][0].tokens == rows[1][0].tokens


def test_training_across_shard_boundaries_resumes_bitwise(train_workspace, tiny_train_config, tmp_path):
    from lmforge import TrainingManager
    from lmforge.observe.reporting import Reporter
    from lmforge.workspace import Workspace

    folder = tmp_path / "src-train"
    write_wikitext(folder, sizes=(("train", 40), ("validation", 6), ("test", 2)))
    ws = Workspace.resolve(train_workspace)
    prepare_dataset(ws, "wikitext-2", source=folder, tokenizer="bytes", alias="sharded", shard_tokens=3000)
    assert len(open_dataset(ws, "sharded").shard_entries("train")) > 3

    def config(run):
        c = tiny_train_config(steps=12, eval_interval=6, sample_tokens=0, run=run, sampling="random")
        c.data.name = "sharded"
        return c

    class StopAt(Reporter):
        def step(self, stats):
            if stats.step == 5:
                self.manager.request_stop()

    TrainingManager(config("straight"), train_workspace, reporter=Reporter()).train()
    stopper = StopAt()
    stopper.manager = TrainingManager(config("halves"), train_workspace, reporter=stopper)
    assert stopper.manager.train().step == 5
    assert TrainingManager(None, train_workspace, resume="halves", reporter=Reporter()).train().step == 12

    def curve(run, kind, key):
        lines = (train_workspace / "runs" / run / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r[key]) for r in map(json.loads, lines) if r["kind"] == kind]

    assert curve("halves", "train", "loss") == curve("straight", "train", "loss")
    assert curve("halves", "eval", "val_loss") == curve("straight", "eval", "val_loss")


def test_cli_shards_budget_list_and_info(cli, source, workspace_dir):
    from lmforge.cli.data import parse_count

    assert [parse_count(t, "--x") for t in ("100M", "2B", "500m", "1_000", "1.5K")] == [
        10**8,
        2 * 10**9,
        5 * 10**8,
        1000,
        1500,
    ]
    bad = cli("data", "prepare", str(source), "--shard-tokens", "lots")
    assert bad.exit_code == 2 and "--shard-tokens" in bad.output
    result = cli(
        "data", "prepare", "wikitext-2", "--source", str(source), "--tokenizer", "bytes",
        "--shard-tokens", "2K", "--max-tokens", "5K", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    train = json.loads(result.stdout)["meta"]["splits"]["train"]
    assert 5000 <= train["tokens"] < 6500 and len(train["shards"]) == 2  # stops at the batch that reaches it
    assert "2 shards" in result.stderr and "MB/s" in result.stderr
    listing = cli("data", "list")
    assert listing.exit_code == 0 and "shards" in listing.stdout
    info = cli("data", "info", "wikitext-2")
    row = next(line for line in info.stdout.splitlines() if line.strip().startswith("train"))
    assert row.split()[6] == "2"  # split, tokens, documents, text bytes (2 words), words, shards


def test_a_full_disk_keeps_the_finished_shards_for_the_resume(data_ws, source, monkeypatch):
    import errno

    real_cut = SplitShards._cut
    cuts = {"n": 0}

    def full_disk(self):
        cuts["n"] += 1
        if cuts["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_cut(self)

    monkeypatch.setattr(SplitShards, "_cut", full_disk)
    with pytest.raises(DataError, match="no space left on the device") as exc:
        prepare_dataset(data_ws, "wikitext-2", source=source, tokenizer="bytes", shard_tokens=SHARD)
    assert "run the same command again: it resumes" in exc.value.hint
    monkeypatch.setattr(SplitShards, "_cut", real_cut)
    result = prepare_dataset(data_ws, "wikitext-2", source=source, tokenizer="bytes", shard_tokens=SHARD)
    assert any("resumed" in n for n in result.notes)


def test_two_prepares_of_one_name_do_not_share_a_partial_folder(data_ws):
    from lmforge.data.staging import PartialPrepare
    from lmforge.errors import UsageError

    first = PartialPrepare(data_ws, "corpus", {"a": 1}).open()
    try:
        with pytest.raises(UsageError, match="another prepare of dataset 'corpus' is running"):
            PartialPrepare(data_ws, "corpus", {"a": 1}).open()
    finally:
        first.close()
    PartialPrepare(data_ws, "corpus", {"a": 1}).open().close()  # free once the first is done


def test_data_list_names_unfinished_prepares(cli, workspace_dir):
    (workspace_dir / "datasets" / ".partial-crawl").mkdir(parents=True)
    result = cli("data", "list", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["unfinished"] == ["crawl"]
    assert "Unfinished prepare of crawl" in " ".join(result.stderr.split())
