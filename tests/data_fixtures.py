"""Data fixtures: a generated WikiText-format corpus, the byte tokenizer, a small ranks file.

Everything is made here, so the data tests need neither the network nor ../shared.
``conftest.py`` imports the fixtures; test modules import the helpers directly.
"""

from __future__ import annotations

import base64
import random
from pathlib import Path

import pytest

WORDS = (
    "the of and in to a was is for as on with by he that at from his it an were are which this "
    "also be had first one their its new after who they has but two her or have been"
).split()
ODD = ["Ünïcödé", "naïve", "€", "😀", "日本語", "1 @,@ 000", "3 @.@ 5", "well @-@ known", "Dürenstein"]


def _paragraph(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(WORDS) if rng.random() > 0.08 else rng.choice(ODD) for _ in range(n_words)]
    return " " + " ".join(words) + " . \n"


def wikitext_article(rng: random.Random, title: str, with_formula: bool = False) -> str:
    """One article in WikiText's raw layout: it starts with a blank line " \\n" and its heading."""
    lines = [" \n", f" = {title} = \n", " \n", _paragraph(rng, rng.randint(20, 60))]
    for s in range(rng.randint(1, 3)):
        lines += [" \n", f" = = Section {s} = = \n", " \n", _paragraph(rng, rng.randint(10, 50))]
        if rng.random() < 0.5:
            lines += [" \n", f" = = = Sub {s} = = = \n", " \n", _paragraph(rng, rng.randint(5, 30))]
    if with_formula:
        # like "Constant k filter" in the real test split: lines that look like level-1
        # headings but sit inside a paragraph (no blank line before and after)
        lines += [
            " The prototype has a cut @-@ off frequency ω c \n",
            " = 1 rad / s and a nominal impedance k = \n",
            " 1 Ω . This is produced by a half section with inductance L \n",
            " = 1 henry and capacitance C = \n",
            " 1 farad . \n",
        ]
    lines.append(" \n")
    return "".join(lines)


def wikitext_split(n_articles: int, seed: int, formula_at: int | None = None) -> tuple[str, list[str]]:
    """``(text, articles)`` of one split; ``"".join(articles) == text``."""
    rng = random.Random(seed)
    articles = [
        wikitext_article(rng, f"Article {seed} {i} ( test )", with_formula=i == formula_at)
        for i in range(n_articles)
    ]
    return "".join(articles), articles


SPLIT_FILES = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}


def write_wikitext(
    folder: Path, sizes=(("train", 12), ("validation", 4), ("test", 5))
) -> dict[str, list[str]]:
    """Write ``wiki.{train,valid,test}.raw`` into ``folder``; returns split -> articles."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (split, n) in enumerate(sizes):
        text, articles = wikitext_split(n, seed=100 + i, formula_at=1 if split == "test" else None)
        (folder / SPLIT_FILES[split]).write_bytes(text.encode("utf-8"))
        out[split] = articles
    return out


def write_ranks_file(
    path: Path, merges: tuple[bytes, ...] = (b"th", b"the", b" t", b" th", b" the", b"he")
) -> Path:
    """A small tiktoken ranks file: the 256 bytes, then ``merges`` (each buildable from earlier tokens)."""
    tokens = [bytes([i]) for i in range(256)] + list(merges)
    path.write_bytes(
        b"".join(base64.b64encode(t) + b" " + str(r).encode() + b"\n" for r, t in enumerate(tokens))
    )
    return path


@pytest.fixture
def wikitext_dir(tmp_path) -> tuple[Path, dict[str, list[str]]]:
    """A source folder in WikiText's original layout and its articles per split."""
    folder = tmp_path / "wikitext-src"
    return folder, write_wikitext(folder)


@pytest.fixture
def byte_tokenizer():
    from lmforge.data.tokenizer import bytes_tokenizer

    return bytes_tokenizer()


@pytest.fixture
def ranks_file(tmp_path) -> Path:
    return write_ranks_file(tmp_path / "small.tiktoken")


@pytest.fixture
def data_ws(tmp_path):
    from lmforge.workspace import Workspace

    return Workspace.resolve(tmp_path / "ws")


def workspace_with_best_checkpoint(root: Path, model_config, *, test_docs: int = 2) -> Path:
    """A workspace under ``root`` with a byte-level wikitext-2 and one run ``tiny`` holding a
    ``best`` checkpoint of an untrained GPT of ``model_config`` (seed 0); returns its root."""
    import json

    import torch

    from lmforge.checkpoint.store import save_checkpoint
    from lmforge.config import TrainingConfig
    from lmforge.data.prepare import prepare_dataset
    from lmforge.data.tokenizer import bytes_tokenizer
    from lmforge.model.gpt import GPT
    from lmforge.workspace import Workspace

    write_wikitext(root / "src", sizes=(("train", 3), ("validation", 2), ("test", test_docs)))
    ws = Workspace.resolve(root / "ws")
    prepare_dataset(ws, "wikitext-2", source=root / "src", tokenizer="bytes")
    config = TrainingConfig(preset="tiny", tokenizer="bytes", model=model_config)
    config.data.name = "wikitext-2"
    run_dir = ws.run_dir("tiny")
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"name": "tiny", "started_at": "2024-01-01T00:00:00+00:00"}))
    torch.manual_seed(0)
    meta = {"kind": "best", "run": "tiny", "step": 10, "tokens": 1000, "val_loss": 5.0}
    meta |= {"config": config.to_dict(), "tokenizer": bytes_tokenizer().identity, "dataset": "wikitext-2"}
    save_checkpoint(run_dir / "checkpoints" / "best", GPT(model_config), meta)
    return ws.root
