"""Data: sources of text, the prepare pipeline, prepared datasets on disk, training windows.

- ``sources``: what a source is (splits streamed as documents); ``wikitext``,
  ``local`` (text and parquet files) and ``hub`` are the sources themselves.
- ``prepare``: ``prepare_dataset`` writes ``datasets/<name>/`` of a workspace,
  with ``plan`` (what NAME means, which splits), ``encode`` (documents ->
  token files) and ``staging`` (the temporary folder, its install and leftovers).
- ``store``: ``open_dataset``/``list_datasets`` read a prepared dataset back.
- ``tokenizer``: GPT-2 (tiktoken) and byte tokenizers, and their identity.
- ``dataset``: the training windows and the loader that batches them.

May import the top-level modules (``errors``, ``fileio``, ``workspace``, ``units``);
not the model, training, evaluation or the CLI.
"""

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
