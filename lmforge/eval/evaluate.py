"""Perplexity of a model on a token stream: sliding windows, every token scored once.

A split of ``N`` tokens has ``N - 1`` targets (the first token has nothing to
predict it). Windows of ``block_size`` tokens start every ``stride`` tokens;
each window scores only the targets that no earlier window scored, so every
target is scored exactly once, and (after the first window) with at least
``block_size - stride`` tokens of context. ``stride == block_size`` gives
non-overlapping windows (fast, the least context); ``stride == 1`` gives every
token the full context (slowest). The last window is shifted back to end at the
last target so that every window is full length and windows batch without
padding.

Besides token-level loss and perplexity, ``evaluate`` reports the two numbers
that compare across tokenizers, both from the summed negative log-likelihood
(NLL, nats) of the split:

* word-level perplexity ``exp(NLL / words)``, where ``words`` is the number of
  whitespace-separated words of the original text (the WikiText convention);
* bits per byte ``NLL / ln 2 / bytes`` over the UTF-8 bytes of the original text.

The end-of-text tokens that prepare put between documents are targets like any
other in the token loss and perplexity (so they match the validation loss of
training, which sees the same stream), but their NLL is left out of word
perplexity and bits per byte: they stand for no word and no byte of the text.

Both need the whole split to be scored: with ``max_tokens`` cutting the split
short they are reported as ``None`` (with a note) rather than extrapolated.

This is ``--protocol stream``; ``harness`` (lm-eval-harness's WikiText task,
document by document) lives in ``harness``.

Under ``torch.distributed`` each rank scores windows ``rank, rank + world_size,
...``; the NLL sums and token counts are summed with ``all_reduce``, so every
rank ends with the result of one process scoring everything.

How a model is scored (windows, batch, device, dtype, rank) is one ``EvalOptions``
(``options``). Imports ``options``, ``distributed``, ``errors`` and ``units``;
``evaluate_checkpoint`` loads through ``checkpoint``, ``data`` and ``device``.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn as nn

from lmforge.distributed import all_reduce_sum
from lmforge.distributed import unwrap as unwrap_model
from lmforge.errors import UsageError
from lmforge.eval.options import DEFAULT_SPLITS, EvalOptions, check_protocol
from lmforge.units import perplexity

if TYPE_CHECKING:
    from lmforge.data.store import PreparedDataset
    from lmforge.workspace import Workspace


# progress(n): n more targets were scored
Progress = Callable[[int], None]


class ProgressFactory(Protocol):
    """``start(label, total)`` -> progress: one bar (or run of log lines) per checkpoint and
    split, counted in ``unit`` (tokens unless said)."""

    def __call__(self, label: str, total: int, unit: str = "tokens") -> Progress: ...


@dataclass(frozen=True)
class EvalResult:
    """Summed NLL (nats) and the number of targets it covers; the part of both that
    predicted an end-of-text token (``eot_token`` of ``evaluate_tokens``)."""

    loss_sum: float
    tokens: int
    eot_loss_sum: float = 0.0
    eot_tokens: int = 0

    @property
    def loss(self) -> float:
        return self.loss_sum / self.tokens if self.tokens else float("nan")

    @property
    def ppl(self) -> float:
        return perplexity(self.loss)

    @property
    def text_loss_sum(self) -> float:
        """The NLL of the targets that are tokens of the text (end-of-text ones left out)."""
        return self.loss_sum - self.eot_loss_sum


@dataclass(frozen=True)
class EvalRow:
    """One line of ``lmforge eval``: one checkpoint on one split, under one protocol.

    ``loss``/``ppl`` are per scored token (``tokens`` of them); under ``stream`` they
    include the ``eot_tokens`` end-of-text targets between documents, which
    ``text_nll`` (the NLL that ``word_ppl``, ``byte_ppl`` and ``bpb`` divide)
    leaves out. Under ``harness`` no end-of-text token is ever predicted."""

    checkpoint: str
    split: str
    loss: float
    ppl: float
    word_ppl: float | None  # None when only part of the split was scored
    bpb: float | None
    tokens: int
    note: str | None = None
    protocol: str = "stream"
    byte_ppl: float | None = None
    text_nll: float | None = None
    eot_tokens: int = 0
    documents: int | None = None

    @property
    def ppl_includes_eot(self) -> bool:
        return self.eot_tokens > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ppl_includes_eot": self.ppl_includes_eot}


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """Mixed precision for inference: bf16/fp16 autocast on CUDA (bf16 also on CPU)."""
    from lmforge.device import TORCH_DTYPES

    if dtype == "fp32" or device.type not in ("cuda", "cpu") or (device.type == "cpu" and dtype != "bf16"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=TORCH_DTYPES[dtype])


def sliding_windows(n_tokens: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, first_scored)`` per window over ``n_tokens`` tokens.

    A window feeds ``tokens[begin:end]`` and predicts ``tokens[begin + 1:end + 1]``;
    it scores the targets at positions ``first_scored .. end - 1`` (input positions),
    the ones no earlier window scored. Targets ``0 .. n_tokens - 2`` are covered once.
    """
    n_targets = n_tokens - 1
    if n_targets < 1:
        return []
    block_size = min(block_size, n_targets)
    windows = []
    scored_to = 0  # targets [0, scored_to) are done
    begin = 0
    while scored_to < n_targets:
        end = min(begin + block_size, n_targets)
        windows.append((end - block_size, end, scored_to))  # shifted back when cut at the end
        scored_to = end
        begin += stride
    return windows


def _batches(windows: Sequence[tuple[int, int, int] | None], batch_size: int) -> Iterator[list]:
    for i in range(0, len(windows), batch_size):
        yield list(windows[i : i + batch_size])


def evaluate_tokens(
    model: nn.Module,
    tokens: Any,
    options: EvalOptions = EvalOptions(),
    *,
    progress: Progress | None = None,
    eot_token: int | None = None,
) -> EvalResult:
    """Sliding-window NLL of ``model`` over ``tokens`` (1-D ints: array, memmap, tensor, list).

    ``options.max_tokens`` scores only the first ``max_tokens`` targets. ``rank``/``world_size``
    pick this process's share of the windows; when ``torch.distributed`` is initialized
    the sums are all-reduced, otherwise the result is this rank's share (which is what
    a test of the reduction wants). ``progress(n)`` is called after each batch with the
    number of targets it scored. The model is put in eval mode and its mode restored.
    With ``eot_token`` the NLL and count of the targets equal to it are also summed apart.
    """
    inner = unwrap_model(model)
    config = getattr(inner, "config", None)
    context = config.block_size if config is not None else options.block_size
    block_size, stride = options.window(context)
    batch_size, max_tokens, dtype = options.batch_size, options.max_tokens, options.dtype
    device, rank, world_size = options.device, options.rank, options.world_size
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)

    n = len(tokens)
    if max_tokens is not None:
        n = min(n, max_tokens + 1)
    if n < 2:
        raise UsageError(f"cannot evaluate on {n} token(s): at least 2 are needed")
    data = _as_array(tokens)[:n]  # a memmap stays a memmap: windows are read as they are needed
    if config is not None:
        top = int(data.max())
        if top >= config.vocab_size:
            raise UsageError(
                f"token id {top} is outside the model's vocabulary of {config.vocab_size}",
                "the data was tokenized with another tokenizer than the model's; prepare it again",
            )

    windows = sliding_windows(n, block_size, stride)
    mine: list[tuple[int, int, int] | None] = list(windows[rank::world_size])
    # Every rank runs the same number of forward passes (padding with windows that score
    # nothing), so that sharded models (FSDP), whose forward is a collective, never hang.
    per_rank = math.ceil(len(windows) / world_size)
    mine += [None] * (per_rank - len(mine))

    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    eot_sum = torch.zeros((), dtype=torch.float64, device=device)
    eot_count = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast(device, dtype):
            for batch in _batches(mine, batch_size):
                x, y = _window_batch(data, batch, windows[0])
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                # per-token NLL (B, T), 0 where y is -1: only the scored positions go through the
                # head, in chunks (no (B, T, vocab) logits)
                _, nll = model(x, y, loss_reduction="none")
                nll = nll.view(-1)
                loss_sum += nll.sum().double()  # stays on the device: no sync per batch
                if eot_token is not None:
                    is_eot = y.view(-1) == eot_token
                    eot_sum += (nll * is_eot).sum().double()
                    eot_count += is_eot.sum().double()
                scored = sum(end - first for (_, end, first) in filter(None, batch))
                count += scored
                if progress is not None and scored:
                    progress(scored)
    finally:
        model.train(was_training)

    count_t = torch.tensor(float(count), dtype=torch.float64, device=device)
    totals = torch.stack([loss_sum, count_t, eot_sum, eot_count])
    if world_size > 1:
        all_reduce_sum(totals)  # a no-op without a process group: this rank's share
    loss_total, tokens_total, eot_total, eots = totals.tolist()  # one device-to-host sync in all
    return EvalResult(loss_total, int(round(tokens_total)), eot_total, int(round(eots)))


def _as_array(tokens: Any) -> np.ndarray:
    if isinstance(tokens, torch.Tensor):
        return tokens.detach().cpu().numpy()
    return tokens if isinstance(tokens, np.ndarray) else np.asarray(tokens, dtype=np.int64)


def _window_batch(
    data: np.ndarray, batch: list[tuple[int, int, int] | None], pad: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (B, T) and targets (B, T) with -1 where a target is not scored here."""
    rows = []
    for window in batch:
        begin, end, first = window or pad
        chunk = np.asarray(data[begin : end + 1], dtype=np.int64)  # (T + 1,)
        y = chunk[1:].copy()
        y[: (first if window else end) - begin] = -1  # scored by an earlier window (or padding)
        rows.append((chunk[:-1], y))
    x = torch.from_numpy(np.stack([r[0] for r in rows]))
    y = torch.from_numpy(np.stack([r[1] for r in rows]))
    return x, y


# ----------------------------------------------------------------------------- checkpoint level


def split_row(
    checkpoint: str,
    split: str,
    result: EvalResult,
    split_meta: dict[str, Any],
    split_tokens: int,
) -> EvalRow:
    """Token, word and byte level numbers for one split.

    Word perplexity and bits per byte divide the NLL of the *whole* split's text
    tokens (the end-of-text targets left out) by the words/bytes of its source text;
    when fewer targets were scored than the split has, they are None (scaling the
    counts by the fraction scored would be a guess).
    """
    full = result.tokens >= split_tokens - 1
    words, nbytes = split_meta.get("words"), split_meta.get("bytes")
    word_ppl = bpb = byte_ppl = None
    note = None
    nll = result.text_loss_sum
    if not full:
        note = f"partial split ({result.tokens:,} of {split_tokens - 1:,} tokens): word ppl and bpb need all"
    else:
        if words:
            word_ppl = perplexity(nll / words)
        if nbytes:
            bpb = nll / math.log(2) / nbytes
            byte_ppl = perplexity(nll / nbytes)
        if not words or not nbytes:
            note = "no word/byte counts in the dataset metadata"
    return EvalRow(
        checkpoint=checkpoint,
        split=split,
        loss=result.loss,
        ppl=result.ppl,
        word_ppl=word_ppl,
        bpb=bpb,
        tokens=result.tokens,
        note=note,
        byte_ppl=byte_ppl,
        text_nll=nll if full else None,
        eot_tokens=result.eot_tokens,
        documents=split_meta.get("documents"),
    )


def check_splits(dataset: PreparedDataset, splits: Sequence[str]) -> None:
    """Every split is checked before the first is scored, so a typo fails fast."""
    for split in splits:
        if split not in dataset.splits:
            raise UsageError(
                f"dataset '{dataset.name}' has no split '{split}' (it has: {', '.join(dataset.splits)})",
                f"use --split {','.join(s for s in dataset.splits if s != 'train') or 'train'}",
            )


def evaluate(
    model: nn.Module,
    dataset: PreparedDataset,
    options: EvalOptions = EvalOptions(),
    *,
    splits: Sequence[str] = DEFAULT_SPLITS,
    checkpoint: str = "model",
    progress: ProgressFactory | None = None,
) -> list[EvalRow]:
    """Evaluate ``model`` on ``splits`` of a prepared dataset: one row per split, labelled
    ``checkpoint``. Every split is checked before the first is scored, so a typo fails fast."""
    options.window(unwrap_model(model).config.block_size)
    check_splits(dataset, splits)
    rows = []
    for split in splits:
        tokens = dataset.tokens(split)
        max_tokens = options.max_tokens
        n_targets = len(tokens) - 1 if max_tokens is None else min(len(tokens) - 1, max_tokens)
        advance = progress(f"{checkpoint} {split}", n_targets) if progress else None
        if advance is not None and options.world_size > 1:  # the bar shows rank 0's share, scaled
            advance = functools.partial(lambda n, f, k: f(n * k), f=advance, k=options.world_size)
        result = evaluate_tokens(model, tokens, options, progress=advance, eot_token=dataset.eot_token)
        rows.append(split_row(checkpoint, split, result, dataset.split_meta(split), len(tokens)))
    return rows


def evaluate_checkpoint(
    workspace: Workspace,
    path: Path,
    options: EvalOptions = EvalOptions(device="auto", dtype="auto"),
    *,
    data: str | None = None,
    splits: Sequence[str] = DEFAULT_SPLITS,
    protocol: str = "stream",
    label: str | None = None,
    progress: ProgressFactory | None = None,
) -> list[EvalRow]:
    """``lmforge eval``: load the checkpoint directory ``path`` (a name is resolved by the
    caller: ``lmforge.runs.names.resolve_checkpoint``), evaluate it on its dataset (or
    ``data``) under ``protocol`` after checking that the tokenizers match. Rows are labelled
    ``label`` (default: the path). ``options.device``/``dtype`` may be ``"auto"``."""
    from lmforge.checkpoint.store import load_model
    from lmforge.data.store import check_tokenizer_match, open_dataset
    from lmforge.device import resolve_device, resolve_dtype

    check_protocol(protocol, options)
    label = str(path) if label is None else label
    dev = resolve_device(options.device or "auto")
    # on a CPU, "auto" reads the bf16 measurement cached once per workspace
    precision = resolve_dtype(options.dtype, dev, workspace.cache_dir)
    model, config, meta = load_model(Path(path), device=dev)
    name = data or meta.get("dataset") or config.data.name
    dataset = open_dataset(workspace, name)
    if meta.get("tokenizer"):
        check_tokenizer_match(dataset.tokenizer_identity, meta["tokenizer"], f"checkpoint {label}")
    options = replace(options, device=dev, dtype=precision)
    if protocol == "harness":
        from lmforge.data.tokenizer import tokenizer_from_identity
        from lmforge.eval.harness import evaluate_harness

        check_splits(dataset, splits)
        tokenizer = tokenizer_from_identity(dataset.tokenizer_identity, workspace=workspace)
        return evaluate_harness(
            model, tokenizer, dataset, options, splits=splits, checkpoint=label, progress=progress
        )
    return evaluate(model, dataset, options, splits=splits, checkpoint=label, progress=progress)
