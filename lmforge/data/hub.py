"""Datasets from the Hugging Face Hub: loading with fast, clear failures offline, and
``hub_source`` for any dataset with a text column (one document per row).

``datasets`` is imported only when the Hub is really used, so local prepares and
``--help`` never pay for it.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from urllib.parse import urlparse

from lmforge.data.sources import SPLITS, Source, SplitSource, normalize_split
from lmforge.errors import DataError, UsageError

HUB_PROBE_TIMEOUT_S = 5.0


def hub_offline() -> bool:
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """None when the Hub answers a TCP connect within ``timeout``, else the reason.

    ``datasets`` retries for about half a minute before it gives up offline; this
    probe fails in seconds (the connect runs in a daemon thread so that even a
    DNS lookup cannot hold us)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    result: dict[str, str] = {}

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["ok"] = ""
        except OSError as exc:
            result["error"] = f"{host}: {exc.strerror or exc}"

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    if "ok" in result:
        return None
    return result.get("error", f"{host}: no answer within {timeout:.0f} s")


def _hub_unreachable(dataset: str, reason: str, wikitext: bool) -> DataError:
    if wikitext:
        hint = (
            "offline, pass --source DIR with wiki.train.raw, wiki.valid.raw, wiki.test.raw (or their zip, "
            "or a copy of the Hub's parquet files)"
        )
    else:
        hint = (
            "offline, prepare a local copy instead (lmforge data prepare PATH.txt|DIR|--source PARQUET-DIR)"
        )
    if hub_offline():
        hint += "; HF_HUB_OFFLINE is set, so only the Hugging Face cache was searched"
    else:
        hint += "; or set HF_HUB_OFFLINE=1 if the dataset is in your Hugging Face cache"
    return DataError(f"cannot reach the Hugging Face Hub for {dataset} ({reason})", hint)


def load_hub(dataset: str, config: str | None, wikitext: bool, streaming: bool = False):
    """``datasets.load_dataset(dataset, config)``, or a one-line ``DataError`` whose hint
    suits a WikiText prepare (``--source``) or any other (a local copy). ``streaming`` reads
    rows as they are tokenized, downloading and caching nothing else."""
    if not hub_offline():
        reason = _hub_reachable()
        if reason is not None:
            raise _hub_unreachable(dataset, reason, wikitext)
    import datasets

    try:
        return datasets.load_dataset(dataset, config, streaming=streaming)
    except (ConnectionError, OSError) as exc:
        raise _hub_unreachable(dataset, str(exc).splitlines()[0][:200], wikitext) from None
    except Exception as exc:  # DatasetNotFoundError, ValueError for a bad config, ...
        raise DataError(
            f"cannot load {dataset}{f' ({config})' if config else ''} from the Hub: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
            "check the dataset id on huggingface.co"
            + (" and its subsets (--subset)" if "config" in str(exc).lower() or config else ""),
        ) from None


def hub_split_map(dsdict) -> dict[str, str]:
    """Our split name -> the Hub's (``valid`` -> ``validation`` etc.)."""
    return {normalize_split(s): s for s in dsdict}


def column_rows(ds, column: str) -> Iterator[str | None]:
    """The values of ``column``, row by row, read a thousand rows at a time."""
    for batch in ds.iter(batch_size=1000):
        yield from batch[column]


def row_texts(rows, dataset_id: str, text_column: str) -> Iterator[str]:
    """The non-empty ``text_column`` values of streamed rows (dicts); a row without that column
    is a one-line error naming the columns it has."""
    for row in rows:
        if text_column not in row:
            raise UsageError(
                f"{dataset_id} has no column '{text_column}' (columns: {', '.join(row)})",
                "choose the text column with --text-column",
            )
        if row[text_column]:
            yield row[text_column]


def arrow_bytes(ds) -> int | None:
    """The split's size in memory (Arrow), as an estimate of its text's UTF-8 size."""
    try:
        return int(ds.data.nbytes)
    except Exception:
        return None


def hub_source(
    dataset_id: str, text_column: str, splits: list[str] | None, subset: str | None = None
) -> tuple[Source, list[str]]:
    """A Hub dataset with a text column, streamed: one document per row, rows read as they
    are tokenized (nothing else is downloaded or cached). ``subset`` is the Hub's config
    name (``sample-10BT`` of ``HuggingFaceFW/fineweb-edu``)."""
    dsdict = load_hub(dataset_id, subset, wikitext=False, streaming=True)
    split_map = hub_split_map(dsdict)
    first = dsdict[next(iter(dsdict))]
    columns = getattr(first, "column_names", None)
    if columns is not None and text_column not in columns:
        raise UsageError(
            f"{dataset_id} has no column '{text_column}' (columns: {', '.join(columns)})",
            "choose the text column with --text-column",
        )

    def make(ds) -> Callable[[], Iterator[str]]:
        return lambda: row_texts(ds, dataset_id, text_column)

    parts = {
        s: SplitSource(s, f"{dataset_id}{f' ({subset})' if subset else ''}:{hub}", make(dsdict[hub]), None)
        for s, hub in split_map.items()
        if s in SPLITS
    }
    return Source("hub", dataset_id, parts), [s for s in SPLITS if s in parts]
