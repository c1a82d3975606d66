"""Data preparation throughput: ``prepare_dataset`` next to tiktoken's own batch encoder.

    python benchmarks/data_prepare.py --mb 50
    python benchmarks/data_prepare.py --mb 540 --runs 1      # a WikiText-103-sized input
    python benchmarks/data_prepare.py --parquet --mb 100,1000 --runs 1   # a parquet corpus, two sizes

With ``--parquet`` the articles are written as parquet files (``part-NNN.parquet``, a
``text`` column, one article a row, ~100 MB a file) and both contenders read them in
order: tiktoken from pyarrow record batches, lmforge as a local corpus of data files
(sharded at the default 100M tokens). Several ``--mb`` sizes show whether peak RSS grows
with the corpus.

The input is built by repeating WikiText files (``--input``: a folder with
``wiki.*.raw`` files or one text file) up to ``--mb`` megabytes, written as
``wiki.train.raw``. Both contenders see the same articles and the same number
of threads:

- ``tiktoken``: ``Encoding.encode_ordinary_batch(articles, num_threads=N)`` on
  the articles already in memory (fed in 32 MB slices so that its Python lists
  of ids fit in memory; only the encode calls are timed);
- ``lmforge``: the whole ``prepare_dataset`` (read, split into articles,
  encode, count bytes/words, checksum, write the token file), end to end.

Each run happens in a fresh subprocess, which reports its own peak RSS
(``ru_maxrss``; for lmforge, the main process plus ``num_proc`` times its
largest encoding worker). ``CPU s/100MB`` is the CPU time both spend (all threads
and worker processes), which a busy machine disturbs less than wall time. The
table shows medians over ``--runs``.
Targets (SPEC §7): lmforge >= 0.9x tiktoken's speed, peak RSS < 1 GB whatever the input size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_INPUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-raw"
DEFAULT_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "gpt2.tiktoken"

CHILD_TIKTOKEN = r"""
import json, resource, sys, time
from lmforge.data.wikitext import split_wikitext_articles
from lmforge.data.tokenizer import get_tokenizer
path, tokfile, threads = sys.argv[1], sys.argv[2] or None, int(sys.argv[3])
enc = get_tokenizer("gpt2", tokenizer_file=tokfile).encoding
seconds = tokens = nbytes = cpu = 0
def encode(docs):
    global seconds, tokens
    global cpu
    t, c = time.perf_counter(), time.process_time()
    out = enc.encode_ordinary_batch(docs, num_threads=threads)
    seconds += time.perf_counter() - t
    cpu += time.process_time() - c
    tokens += sum(map(len, out))
docs, size = [], 0
with open(path, encoding="utf-8", newline="") as f:
    for doc in split_wikitext_articles(iter(lambda: f.read(1 << 20), "")):
        docs.append(doc); size += len(doc); nbytes += len(doc.encode())
        if size >= 32 << 20:
            encode(docs); docs, size = [], 0
if docs:
    encode(docs)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "tokens": tokens, "bytes": nbytes, "rss": rss, "cpu": cpu}))
"""

CHILD_PREPARE = r"""
import json, resource, sys, time
from lmforge.data.prepare import prepare_dataset
from lmforge.workspace import Workspace
source, ws, tokfile, threads = sys.argv[1], sys.argv[2], sys.argv[3] or None, int(sys.argv[4])
t = time.perf_counter()
c0 = resource.getrusage(resource.RUSAGE_SELF)
r = prepare_dataset(Workspace.resolve(ws), "wikitext-103", source=source, splits="train",
                    tokenizer_file=tokfile, num_proc=threads, force=True)
seconds = time.perf_counter() - t
m = r.meta["splits"]["train"]
# the main process plus the largest encoding worker (workers run side by side: a fair upper bound
# would add num_proc of them; they hold a tokenizer and a few MB of batches each)
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
rss = (me.ru_maxrss + kids.ru_maxrss * threads) * 1024
cpu = me.ru_utime + me.ru_stime - c0.ru_utime - c0.ru_stime + kids.ru_utime + kids.ru_stime
print(json.dumps({"seconds": seconds, "tokens": m["tokens"], "bytes": m["bytes"], "rss": rss, "cpu": cpu}))
"""


CHILD_TIKTOKEN_PARQUET = r"""
import json, resource, sys, time
from pathlib import Path
import pyarrow.parquet as pq
from lmforge.data.tokenizer import get_tokenizer
folder, tokfile, threads = Path(sys.argv[1]), sys.argv[2] or None, int(sys.argv[3])
enc = get_tokenizer("gpt2", tokenizer_file=tokfile).encoding
seconds = tokens = nbytes = cpu = 0
def encode(docs):
    global seconds, tokens, cpu
    t, c = time.perf_counter(), time.process_time()
    out = enc.encode_ordinary_batch(docs, num_threads=threads)
    seconds += time.perf_counter() - t
    cpu += time.process_time() - c
    tokens += sum(map(len, out))
docs, size = [], 0
for file in sorted(folder.glob("*.parquet")):
    for batch in pq.ParquetFile(file).iter_batches(columns=["text"], batch_size=4096):
        for doc in batch.column(0).to_pylist():
            docs.append(doc); size += len(doc); nbytes += len(doc.encode())
            if size >= 32 << 20:
                encode(docs); docs, size = [], 0
if docs:
    encode(docs)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "tokens": tokens, "bytes": nbytes, "rss": rss, "cpu": cpu}))
"""

CHILD_PREPARE_PARQUET = CHILD_PREPARE.replace(
    'prepare_dataset(Workspace.resolve(ws), "wikitext-103", source=source, splits="train",',
    'prepare_dataset(Workspace.resolve(ws), source, alias="corpus", splits="train",',
)


def build_parquet(src: Path, mb: float, out: Path) -> int:
    """Articles of ``src`` (wiki.*.raw files) repeated into ``out/part-NNN.parquet`` (a ``text``
    column) up to ``mb`` MB of UTF-8 text, ~100 MB a file, written as it goes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmforge.data.wikitext import split_wikitext_articles

    files = [src] if src.is_file() else sorted(src.glob("wiki.*.raw"))
    articles = []
    for file in files:
        with open(file, encoding="utf-8", newline="") as f:
            articles += list(split_wikitext_articles(iter(lambda: f.read(1 << 20), "")))
    if not articles:
        sys.exit(f"no wiki.*.raw text in {src}")
    out.mkdir(parents=True, exist_ok=True)
    target, written, index = int(mb * 1e6), 0, 0
    while written < target:
        rows, size = [], 0
        while size < 100e6 and written + size < target:
            for article in articles:
                rows.append(article)
                size += len(article.encode("utf-8"))
                if size >= 100e6 or written + size >= target:
                    break
        pq.write_table(pa.table({"text": rows}), out / f"part-{index:03d}.parquet", row_group_size=2000)
        written += size
        index += 1
    return written


def build_input(src: Path, mb: float, out: Path) -> int:
    """Repeat the text of ``src`` (a file, or a folder's wiki.*.raw files) into ``out`` up to ``mb`` MB.

    Whole files are repeated, so every copy starts at an article heading."""
    files = [src] if src.is_file() else sorted(src.glob("wiki.*.raw")) or sorted(src.glob("*.txt"))
    if not files:
        sys.exit(f"no wiki.*.raw or .txt files in {src}")
    target = int(mb * 1e6)
    written = 0
    with open(out, "wb") as f:
        while written < target:
            for file in files:
                data = file.read_bytes()
                f.write(data)
                written += len(data)
                if written >= target:
                    break
    return written


def run_child(code: str, *args: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env={**os.environ}, check=False
    )
    if result.returncode != 0:
        sys.exit(f"benchmark child failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--mb", default="50", help="input size in MB; several sizes comma-separated (default 50)"
    )
    parser.add_argument("--parquet", action="store_true", help="a parquet corpus instead of one text file")
    parser.add_argument(
        "--input", type=Path, default=DEFAULT_INPUT, help="folder with wiki.*.raw, or a text file"
    )
    parser.add_argument(
        "--tokenizer-file", default=None, help="gpt2.tiktoken (default: ../shared copy or env)"
    )
    parser.add_argument("--num-proc", type=int, default=None, help="threads for both (default: all cores)")
    parser.add_argument(
        "--kill-at",
        type=float,
        default=None,
        help="also SIGKILL a parquet prepare (10 shards) at this fraction of its time, resume it, and "
        "compare with an uninterrupted one (e.g. 0.5)",
    )
    parser.add_argument(
        "--runs", type=int, default=2, help="runs per contender; medians are shown (default 2)"
    )
    args = parser.parse_args()

    from lmforge.data.tokenizer import default_num_threads

    threads = args.num_proc or default_num_threads()
    tokfile = args.tokenizer_file or os.environ.get("LMFORGE_TOKENIZER_FILE") or ""
    if not tokfile and DEFAULT_TOKENIZER.is_file():
        tokfile = str(DEFAULT_TOKENIZER)

    for mb in [float(x) for x in args.mb.split(",")]:
        measure(args, mb, threads, tokfile)
        if args.kill_at is not None:
            kill_and_resume(args, mb, threads, tokfile)


CHILD_SHARDED = r"""
import sys, time
from lmforge.data.prepare import prepare_dataset
from lmforge.workspace import Workspace
t = time.perf_counter()
prepare_dataset(Workspace.resolve(sys.argv[2]), sys.argv[1], alias="corpus", splits="train",
                tokenizer_file=sys.argv[3] or None, num_proc=int(sys.argv[4]), shard_tokens=int(sys.argv[5]))
print(time.perf_counter() - t)
"""


def kill_and_resume(args, mb: float, threads: int, tokfile: str) -> None:
    """An uninterrupted prepare in 10 shards, then one SIGKILLed at ``--kill-at`` of its time and
    resumed with the same command: the shards must be byte-identical, and the two runs together
    should cost at most one shard more than the uninterrupted one."""
    import filecmp
    import signal
    import time

    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as tmp:
        source = Path(tmp) / "source"
        build_parquet(args.input, mb, source)
        shard_tokens = int(mb * 1e6 / 4.4 / 10)  # ~4.4 bytes a GPT-2 token on WikiText: ~10 shards
        common = [str(source), "", tokfile, str(threads), str(shard_tokens)]

        def run(ws: str) -> subprocess.Popen:
            cmd = [sys.executable, "-c", CHILD_SHARDED, common[0], ws, *common[2:]]
            return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)

        straight = run(str(Path(tmp) / "a"))
        full = float(straight.communicate()[0])
        killed = run(str(Path(tmp) / "b"))
        time.sleep(full * args.kill_at)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        partial = Path(tmp) / "b" / "datasets" / ".partial-corpus"
        done = json.loads((partial / "progress.json").read_text())["splits"].get("train", {})
        kept = len(done.get("shards", []))
        resumed = run(str(Path(tmp) / "b"))
        rest = float(resumed.communicate()[0])
        a, b = Path(tmp) / "a" / "datasets" / "corpus", Path(tmp) / "b" / "datasets" / "corpus"
        names = sorted(p.name for p in a.iterdir() if p.name != "meta.json")
        same = names == sorted(p.name for p in b.iterdir() if p.name != "meta.json") and all(
            filecmp.cmp(a / n, b / n, shallow=False) for n in names
        )
        shards = len(json.loads((a / "meta.json").read_text())["splits"]["train"]["shards"])
        print(
            f"kill at {args.kill_at:.0%} of {full:.1f} s: {kept} of {shards} shards kept; "
            f"resume {rest:.1f} s; "
            f"killed + resumed = {full * args.kill_at + rest:.1f} s vs {full:.1f} s uninterrupted "
            f"(one shard ~{full / shards:.1f} s); byte-identical: {same}",
            flush=True,
        )


def measure(args, mb: float, threads: int, tokfile: str) -> None:
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as tmp:
        source = Path(tmp) / "source"
        source.mkdir()
        if args.parquet:
            size = build_parquet(args.input, mb, source)
            contenders = {
                "tiktoken batch": (CHILD_TIKTOKEN_PARQUET, str(source), tokfile, str(threads)),
                "lmforge prepare": (
                    CHILD_PREPARE_PARQUET,
                    str(source),
                    str(Path(tmp) / "ws"),
                    tokfile,
                    str(threads),
                ),
            }
        else:
            size = build_input(args.input, mb, source / "wiki.train.raw")
            contenders = {
                "tiktoken batch": (CHILD_TIKTOKEN, str(source / "wiki.train.raw"), tokfile, str(threads)),
                "lmforge prepare": (CHILD_PREPARE, str(source), str(Path(tmp) / "ws"), tokfile, str(threads)),
            }
        kind = "parquet" if args.parquet else "text"
        print(f"input: {size / 1e6:.1f} MB of {kind} from {args.input}, {threads} threads,", end=" ")
        print(f"{args.runs} run(s) each", flush=True)
        results: dict[str, list[dict]] = {name: [] for name in contenders}
        for _ in range(args.runs):  # interleaved, so a busy machine hurts both alike
            for name, child in contenders.items():
                results[name].append(run_child(*child))

    rows = []
    for name, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        rows.append(
            {
                "what": name,
                "seconds": seconds,
                "MB/s": runs[0]["bytes"] / seconds / 1e6,
                "tokens/s": runs[0]["tokens"] / seconds,
                "tokens": runs[0]["tokens"],
                "peak RSS": statistics.median(r["rss"] for r in runs),
                "cpu": statistics.median(r["cpu"] for r in runs),
            }
        )
    base = rows[0]["MB/s"]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(
            title=f"Data preparation, {size / 1e6:.0f} MB of WikiText ({kind}), {threads} threads (medians)"
        )
        for col in ("what", "seconds", "MB/s", "M tok/s", "CPU s/100MB", "peak RSS", "vs tiktoken"):
            table.add_column(col, justify="left" if col == "what" else "right")
        for r in rows:
            table.add_row(
                r["what"],
                f"{r['seconds']:.2f}",
                f"{r['MB/s']:.2f}",
                f"{r['tokens/s'] / 1e6:.2f}",
                f"{r['cpu'] / (size / 1e8):.1f}",
                f"{r['peak RSS'] / 2**20:,.0f} MiB",
                f"{r['MB/s'] / base:.2f}x",
            )
        Console(width=120).print(table)
    except ImportError:
        for r in rows:
            print(r)


if __name__ == "__main__":
    main()
