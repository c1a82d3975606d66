"""``--protocol harness``: lm-eval-harness's ``wikitext`` task on lmforge's model and documents.

The protocol, as lm-eval-harness defines it (``lm_eval/tasks/wikitext``:
``output_type: loglikelihood_rolling``, scored by ``loglikelihood_rolling`` with
``context_len=1``):

1. one request per document (a WikiText article), its text passed through
   ``wikitext_detokenizer``;
2. the detokenized text is encoded and scored in rolling *disjoint* windows of
   the model's context ``L``. The tokens are prefixed with the end-of-text
   token: the first window predicts tokens ``0 .. L-1`` from
   ``[eot] + tokens[:L-1]``, every later window predicts the next ``L`` tokens
   from the ``L`` tokens before each, and a last, shorter window is shifted back
   so that it still reads ``L`` tokens but scores only the tokens no window
   scored. Every token of the document is predicted exactly once; nothing
   predicts the end-of-text token;
3. ``LL`` is a document's summed log-likelihood (nats). Over the split::

       word_perplexity = exp(-ΣLL / Σwords)
       byte_perplexity = exp(-ΣLL / Σbytes)
       bits_per_byte   = -ΣLL / Σbytes / ln 2

   with ``words = len(re.split(r"\\s+", page))`` and ``bytes = len(page.encode())``
   of the *original* page, before detokenization (lm-eval's ``process_results``).
   ``re.split`` counts an empty string at each end of a page that starts or
   ends with whitespace, as lm-eval does; the numbers keep that.

``score_pairs`` is the primitive under both this protocol and the lm-eval
adapter (``lm_eval_adapter``): the log-likelihood of a continuation after a
context, computed as lm-eval's Hugging Face model does (the last ``L + 1``
tokens of context + continuation, logits of the continuation's positions, fp32
log-softmax over the model's whole output, padded vocabulary rows included).

Under ``torch.distributed`` each rank scores windows ``rank, rank + world_size,
...`` (padded so every rank runs the same number of forward passes); the
per-document sums are all-reduced, so every rank ends with the whole result.

Imports ``evaluate`` (the windows, the row, autocast), ``options``, ``distributed`` and
``units``; the tokenizer and dataset are passed in.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from lmforge.distributed import all_reduce_sum
from lmforge.distributed import unwrap as unwrap_model
from lmforge.eval.evaluate import EvalRow, Progress, ProgressFactory, autocast, sliding_windows
from lmforge.eval.options import EvalOptions, check_protocol, check_window
from lmforge.units import perplexity

if TYPE_CHECKING:
    from lmforge.data.store import PreparedDataset
    from lmforge.data.tokenizer import Tokenizer

Pair = tuple[list[int], list[int]]  # (context ids, continuation ids)


# ----------------------------------------------------------------------------- WikiText's text


def wikitext_detokenizer(page: str) -> str:
    """WikiText's tokenized spacing undone, step for step as lm-eval's ``wikitext`` task
    does it (the order matters: later rules see the output of earlier ones)."""
    s = page
    # contractions
    s = s.replace("s '", "s'")
    s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)  # a pattern that never matches real text; kept for parity
    # number separators
    s = s.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    # punctuation
    for mark in (":", ";", ".", "!", "?", ","):
        s = s.replace(f" {mark} ", f"{mark} ")
    # brackets and quotes hug their contents
    s = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", s)
    s = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", s)
    s = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", s)
    s = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', s)
    s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
    # headings, degrees, line ends, numbers, possessives
    s = s.replace("= = = =", "====").replace("= = =", "===").replace("= =", "==")
    s = s.replace(" \u00b0 ", "\u00b0")
    s = s.replace(" \n", "\n").replace("\n ", "\n")
    s = s.replace(" N ", " 1 ")
    s = s.replace(" 's", "'s")
    return s


def harness_words(page: str) -> int:
    """Words of a page as lm-eval's ``wikitext`` counts them (see the module docstring)."""
    return len(re.split(r"\s+", page))


def harness_bytes(page: str) -> int:
    return len(page.encode("utf-8"))


# ----------------------------------------------------------------------------- scoring


def rolling_pairs(tokens: Sequence[int], prefix: int, context: int) -> list[Pair]:
    """A document's disjoint rolling windows as ``(context, continuation)`` pairs: the
    windows of lm-eval's ``get_rolling_token_windows(context_len=1)`` after
    ``make_disjoint_window``. Every token is in exactly one continuation."""
    seq = [prefix, *tokens]  # seq[i + 1] is tokens[i]
    pairs = []
    # the stream protocol's windows over [prefix] + tokens with stride == block size are these
    # windows: disjoint, and the last one shifted back to read a full block
    for begin, end, first in sliding_windows(len(seq), context, context):
        pairs.append((seq[begin : first + 1], seq[first + 1 : end + 1]))
    return pairs


def score_pairs(
    model: nn.Module,
    pairs: Sequence[Pair],
    options: EvalOptions = EvalOptions(),
    *,
    progress: Progress | None = None,
    greedy: bool = True,
) -> list[tuple[float, bool]]:
    """``(log-likelihood, greedy)`` of each continuation after its context.

    The model reads the last ``L + 1`` tokens of context + continuation minus the
    last one (``L`` = its context); the continuation must fit in ``L`` tokens.
    ``greedy`` is whether every continuation token is the model's argmax. Pairs are
    run longest first and right-padded within a batch: a causal model's outputs at
    the real positions do not see the padding. ``progress(n)``: n more tokens scored.
    ``greedy=False`` skips the argmax (rolling windows need only the sums) and reports False.
    Of ``options``: ``batch_size``, ``device`` and ``dtype``.
    """
    inner = unwrap_model(model)
    context = inner.config.block_size
    batch_size, device, dtype = options.batch_size, options.device, options.dtype
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    rows = []
    for i, (ctx, cont) in enumerate(pairs):
        if not 1 <= len(cont) <= context:
            raise ValueError(f"a continuation of {len(cont)} tokens does not fit a context of {context}")
        full = [*ctx, *cont][-(context + 1) :]
        rows.append((i, full[:-1], len(cont), full[-len(cont) :]))
    order = sorted(rows, key=lambda r: -len(r[1]))
    results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast(device, dtype):
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                width = len(batch[0][1])
                x = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
                y = torch.full((len(batch), width), -1, dtype=torch.long)  # -1: not scored
                for b, (_, inp, n_cont, cont) in enumerate(batch):
                    x[b, : len(inp)] = torch.tensor(inp)
                    y[b, len(inp) - n_cont : len(inp)] = torch.tensor(cont)
                x, y = x.to(device), y.to(device)
                # per-token NLL (B, T), 0 where y is -1, and whether each target is the argmax:
                # only the scored positions go through the head (no (B, T, vocab) logits)
                is_argmax, nll = model(x, y, loss_reduction="none", with_argmax=greedy)
                scored = y >= 0
                ll = (-nll).sum(-1).double()  # (B,)
                if greedy:
                    is_greedy = (is_argmax | ~scored).all(-1)  # (B,)
                else:
                    is_greedy = torch.zeros(len(batch), dtype=torch.bool)
                # .tolist(): one device-to-host sync per batch, for the per-request results
                for (i, *_), value, g in zip(batch, ll.tolist(), is_greedy.tolist(), strict=True):
                    results[i] = (value, bool(g))
                if progress is not None:
                    progress(int(sum(r[2] for r in batch)))
    finally:
        model.train(was_training)
    return results


def rolling_loglikelihoods(
    model: nn.Module,
    documents: Sequence[Sequence[int]],
    options: EvalOptions = EvalOptions(),
    *,
    prefix: int,
    progress: Progress | None = None,
) -> list[float]:
    """Summed log-likelihood of each token list, in disjoint rolling windows of the
    model's context after a ``prefix`` token (lm-eval's ``loglikelihood_rolling``).
    Sharded over ranks as the module docstring says; an empty document scores 0."""
    context = unwrap_model(model).config.block_size
    device, rank, world_size = options.device, options.rank, options.world_size
    windows = [(d, pair) for d, doc in enumerate(documents) for pair in rolling_pairs(doc, prefix, context)]
    mine = windows[rank::world_size]
    # every rank runs as many forward passes as the others (FSDP's forward is a collective)
    per_rank = math.ceil(len(windows) / world_size) if windows else 0
    padding = per_rank - len(mine)
    if padding and windows:
        mine = mine + [(-1, windows[0][1])] * padding
    pairs = [pair for _, pair in mine]
    scores = score_pairs(model, pairs, options, progress=progress, greedy=False)
    if device is None:
        device = next(model.parameters()).device
    totals = torch.zeros(len(documents), dtype=torch.float64)
    for (d, _), (ll, _) in zip(mine, scores, strict=True):
        if d >= 0:
            totals[d] += ll
    if world_size > 1:
        totals = totals.to(device)
        all_reduce_sum(totals)  # a no-op without a process group: this rank's share
    return totals.tolist()


# ----------------------------------------------------------------------------- the protocol


def evaluate_harness(
    model: nn.Module,
    tokenizer: Tokenizer,
    dataset: PreparedDataset,
    options: EvalOptions = EvalOptions(),
    *,
    splits: Sequence[str],
    checkpoint: str = "model",
    progress: ProgressFactory | None = None,
) -> list[EvalRow]:
    """One row per split: lm-eval's ``wikitext`` numbers on the split's documents.

    The windows are the model's context: ``options`` gives the batch, device, dtype and
    rank (its window options are refused). Every split's documents are read before the
    first is scored, so a dataset that does not keep them fails at once (with the command
    that fixes it)."""
    check_protocol("harness", options)
    context = unwrap_model(model).config.block_size
    check_window(context, context, options.batch_size, context)
    world_size = options.world_size
    pages = {split: dataset.documents(split) for split in splits}
    rows = []
    for split in splits:
        encoded = [tokenizer.encode(wikitext_detokenizer(page)) for page in pages[split]]
        n_tokens = sum(len(t) for t in encoded)
        advance = progress(f"{checkpoint} {split}", n_tokens) if progress else None
        if advance is not None and world_size > 1:  # rank 0's share, scaled to the whole
            advance = (lambda f: lambda n: f(n * world_size))(advance)
        lls = rolling_loglikelihoods(model, encoded, options, prefix=tokenizer.eot_token, progress=advance)
        nll = -sum(lls)
        words = sum(harness_words(p) for p in pages[split])
        nbytes = sum(harness_bytes(p) for p in pages[split])
        loss = nll / n_tokens if n_tokens else float("nan")
        rows.append(
            EvalRow(
                checkpoint=checkpoint,
                split=split,
                loss=loss,
                ppl=perplexity(loss),
                word_ppl=perplexity(nll / words),
                bpb=nll / math.log(2) / nbytes,
                tokens=n_tokens,
                protocol="harness",
                byte_ppl=perplexity(nll / nbytes),
                text_nll=nll,
                eot_tokens=0,
                documents=len(pages[split]),
            )
        )
    return rows
