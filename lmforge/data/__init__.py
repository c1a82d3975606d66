"""Data: sources of text, the prepare pipeline, and prepared datasets on disk.

``prepare_dataset`` writes ``datasets/<name>/`` of a workspace;
``open_dataset``/``list_datasets`` read it back (see ``store``)."""

from lmforge.data.prepare import PrepareProgress, PrepareResult, prepare_dataset
from lmforge.data.store import PreparedDataset, check_tokenizer_match, list_datasets, open_dataset

__all__ = [
    "PrepareProgress",
    "PrepareResult",
    "PreparedDataset",
    "check_tokenizer_match",
    "list_datasets",
    "open_dataset",
    "prepare_dataset",
]
