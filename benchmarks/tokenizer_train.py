"""Trained tokenizers: training time and bytes per token at 8k/16k/32k next to GPT-2's, and
encoding throughput next to GPT-2's tiktoken.

    python benchmarks/tokenizer_train.py
    python benchmarks/tokenizer_train.py --vocab 8192,32768 --encode-mb 50 --runs 5

Training text: the train split of ``shared/data/wikitext-smoke`` (WikiText's real validation
text, 1.1 MB) through ``lmforge.data.tokenizer_train.train_tokenizer`` (what ``lmforge
tokenizer train`` runs). Bytes per token: on ``wikitext-smoke/wiki.test.raw``, text no
tokenizer saw. Throughput, same text and threads for both:

- ``encode``: ``Encoding.encode_ordinary_batch(articles, num_threads=N)`` on the WikiText
  articles repeated to ``--encode-mb`` MB, GPT-2's encoding and the trained one's;
- ``prepare``: ``prepare_dataset`` of that text end to end (read, encode, count, write) with
  ``--tokenizer gpt2`` and with the trained tokenizer.

Runs alternate between the two and the table shows medians over ``--runs``. The target
(issue 24): the trained tokenizer at >= 0.5x GPT-2's throughput.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def shared_dir() -> Path:
    """``shared/`` beside the checkout (``../shared`` from the repository, or one level up)."""
    here = Path(__file__).resolve()
    for parent in here.parents[1:4]:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared"
    raise SystemExit("no shared/data found beside the checkout: pass --data and --gpt2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="wikitext-smoke-like source folder")
    parser.add_argument("--gpt2", type=Path, default=None, help="GPT-2's gpt2.tiktoken")
    parser.add_argument("--vocab", default="8192,16384,32768")
    parser.add_argument("--encode-mb", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    data = args.data or shared_dir() / "data" / "wikitext-smoke"
    gpt2_file = args.gpt2 or shared_dir() / "tokenizers" / "gpt2.tiktoken"
    os.environ["LMFORGE_TOKENIZER_FILE"] = str(gpt2_file)

    from lmforge.data.tokenizer import default_num_threads, get_tokenizer
    from lmforge.data.tokenizer_train import train_tokenizer
    from lmforge.data.wikitext import split_wikitext_articles
    from lmforge.workspace import Workspace

    threads = args.threads or default_num_threads()
    ws = Workspace.resolve(tempfile.mkdtemp(prefix="tokbench-"))
    held_out = (data / "wiki.test.raw").read_text(encoding="utf-8")
    held_bytes = len(held_out.encode("utf-8"))
    gpt2 = get_tokenizer("gpt2", workspace=ws)
    print(f"training text: {data}/wiki.train.raw; held-out: wiki.test.raw ({held_bytes:,} bytes)")
    print(f"{'tokenizer':<12} {'vocab':>7} {'train s':>8} {'bytes/token':>12} {'vs GPT-2':>9}")
    gpt2_bpt = held_bytes / len(gpt2.encode(held_out))
    print(f"{'gpt2':<12} {gpt2.vocab_size:>7,} {'-':>8} {gpt2_bpt:>12.3f} {1.0:>9.2f}")
    names = []
    for vocab in [int(v) for v in args.vocab.split(",")]:
        name = f"wiki-{vocab // 1024}k"
        started = time.perf_counter()
        result = train_tokenizer(ws, name, "wikitext-2", source_dir=str(data), vocab_size=vocab)
        seconds = time.perf_counter() - started
        tok = get_tokenizer(name, workspace=ws)
        bpt = held_bytes / len(tok.encode(held_out))
        print(
            f"{name:<12} {result.meta['vocab_size']:>7,} {seconds:>8.1f} {bpt:>12.3f} {bpt / gpt2_bpt:>9.2f}"
        )
        names.append(name)

    # throughput: the WikiText articles repeated to --encode-mb MB
    articles = list(split_wikitext_articles(iter([(data / "wiki.train.raw").read_text(encoding="utf-8")])))
    articles += list(split_wikitext_articles(iter([held_out])))
    one = sum(len(a.encode("utf-8")) for a in articles)
    docs = articles * max(1, args.encode_mb * 2**20 // one)
    nbytes = one * (len(docs) // len(articles))
    src = Path(ws.root) / "src"
    src.mkdir()
    (src / "wiki.train.raw").write_text("".join(docs), encoding="utf-8")
    (src / "wiki.valid.raw").write_text(articles[0], encoding="utf-8")
    (src / "wiki.test.raw").write_text(articles[1], encoding="utf-8")
    trained = names[-1]
    contenders = {"gpt2": gpt2, trained: get_tokenizer(trained, workspace=ws)}
    print(f"\nthroughput on {nbytes / 1e6:.1f} MB, {threads} threads, median of {args.runs} (MB/s):")
    encode: dict[str, list[float]] = {k: [] for k in contenders}
    prepare: dict[str, list[float]] = {k: [] for k in contenders}
    from lmforge.data.prepare import prepare_dataset

    for run in range(args.runs):
        for name, tok in contenders.items():
            started = time.perf_counter()
            tok.encoding.encode_ordinary_batch(docs, num_threads=threads)
            encode[name].append(nbytes / (time.perf_counter() - started) / 1e6)
            started = time.perf_counter()
            prepare_dataset(
                ws, "wikitext-2", source=src, tokenizer=name, alias=f"p-{name}-{run}", num_proc=threads
            )
            prepare[name].append(nbytes / (time.perf_counter() - started) / 1e6)
    for what, speeds in (("encode", encode), ("prepare", prepare)):
        base = statistics.median(speeds["gpt2"])
        for name, values in speeds.items():
            m = statistics.median(values)
            print(f"  {what:<8} {name:<12} {m:8.1f} MB/s  {m / base:5.2f}x GPT-2")


if __name__ == "__main__":
    main()
