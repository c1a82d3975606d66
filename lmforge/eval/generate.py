"""Text generation with a KV cache: the prompt is fed once, then one token per step.

Each step feeds only the newest token; the keys and values of everything before
it come from the cache, so a step costs O(context) attention instead of a full
forward over the prefix.

When the context is full (``block_size`` positions cached) generation goes on by
sliding: the cache is rebuilt from the last ``block_size // 2`` tokens (one
forward over them) and filling resumes. This costs one half-block forward every
``block_size // 2`` tokens, so steps stay cheap on average; the price is that
after a slide the model sees at least half a block of context rather than a full
one. Without the cache (``use_cache=False``) every step recomputes the last
``block_size`` tokens (nanoGPT's crop), so the two agree token for token until
the context first fills.

Streaming: token boundaries need not be character boundaries (GPT-2's BPE and
the byte tokenizer split multi-byte UTF-8 characters), so each token's bytes go
through an incremental UTF-8 decoder and ``on_text`` only ever receives whole
characters.

Imports ``evaluate`` (autocast), ``distributed`` and ``errors``; ``load_for_generation``
loads through ``checkpoint``, ``data`` and ``device``.
"""

from __future__ import annotations

import codecs
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from lmforge.distributed import unwrap as unwrap_model
from lmforge.errors import CheckpointError, UsageError
from lmforge.eval.evaluate import autocast

if TYPE_CHECKING:
    from lmforge.data.tokenizer import Tokenizer
    from lmforge.model.gpt import GPT
    from lmforge.workspace import Workspace


class PromptCroppedWarning(UserWarning):
    """The prompt was longer than the model's context; its first tokens were dropped."""


def check_sampling(
    *,
    max_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    greedy: bool,
    num_samples: int,
) -> None:
    """The one-line errors for sampling options that cannot work."""
    if max_tokens < 0:
        raise UsageError(f"--max-tokens must be >= 0, got {max_tokens}")
    if num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {num_samples}")
    if greedy:
        return
    if not temperature > 0:
        raise UsageError(
            f"--temperature must be > 0 when sampling, got {temperature}",
            "use --greedy for deterministic argmax decoding",
        )
    if top_k is not None and top_k < 1:
        raise UsageError(f"--top-k must be >= 1, got {top_k}", "omit --top-k to sample from every token")
    if top_p is not None and not 0 < top_p <= 1:
        raise UsageError(
            f"--top-p must be in (0, 1], got {top_p}", "e.g. --top-p 0.9; --top-p 1 keeps every token"
        )


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from last-position logits (B, vocab).

    Temperature scales the logits; top-k keeps the k most likely tokens; top-p
    (nucleus) keeps the smallest set whose probability reaches p (the most likely
    token always stays, so a tiny p is greedy).
    """
    logits = logits.float()
    if greedy:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, [-1]]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the tokens before it already reach p; the first always stays
        drop = (cum - sorted_logits.softmax(dim=-1)) >= top_p
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


class Utf8Stream:
    """Token ids in, whole characters out: bytes of a character split across
    tokens are held back until the character is complete."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self.decoder.decode(self.tokenizer.decode_bytes([token]))

    def flush(self) -> str:
        """Whatever is left at the end (an unfinished character becomes U+FFFD)."""
        return self.decoder.decode(b"", final=True)


def generate(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    *,
    max_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    greedy: bool = False,
    num_samples: int = 1,
    seed: int | None = None,
    stop_at_eot: bool = True,
    use_cache: bool = True,
    on_text: Callable[[int, str], None] | None = None,
    dtype: str = "fp32",
    on_warning: Callable[[str], None] | None = None,
    on_sample_end: Callable[[int, str], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Complete ``prompt`` ``num_samples`` times; returns the completions (without the prompt).

    ``on_text(sample_index, text)`` receives each completion piece by piece as it is
    made, always whole characters; ``on_sample_end(sample_index, completion)`` follows
    each finished sample; ``progress(1)`` follows each new token. Samples are made one
    after another from one random generator seeded with ``seed``, so a seed gives the
    same samples streamed or not.
    An empty prompt starts from the end-of-text token (unconditional samples). A
    prompt longer than the context keeps its last ``block_size`` tokens and warns
    (``on_warning(message)``, else a ``PromptCroppedWarning``). The model is put in eval
    mode and its mode restored; ``dtype`` bf16/fp16 runs it under autocast.
    """
    check_sampling(
        max_tokens=max_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        greedy=greedy,
        num_samples=num_samples,
    )
    # the plain module: no DDP hooks, and no torch.compile recompiles for every cache length
    model = unwrap_model(model)
    config = model.config
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_token]
    if len(ids) > config.block_size:
        message = (
            f"the prompt has {len(ids)} tokens, more than the model's context of {config.block_size}; "
            f"only its last {config.block_size} tokens are used"
        )
        if on_warning is not None:
            on_warning(message)
        else:
            warnings.warn(message, PromptCroppedWarning, stacklevel=2)
        ids = ids[-config.block_size :]

    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)

    completions = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast(device, dtype):
            for i in range(num_samples):
                emit = (lambda text, i=i: on_text(i, text)) if on_text is not None else None
                new = _generate_one(
                    model,
                    config.block_size,
                    ids,
                    max_tokens=max_tokens,
                    sample=lambda logits: sample_next(
                        _mask_beyond(logits, tokenizer.vocab_size),
                        temperature=temperature,
                        top_k=top_k,
                        top_p=top_p,
                        greedy=greedy,
                        generator=generator,
                    ),
                    eot=tokenizer.eot_token if stop_at_eot else None,
                    use_cache=use_cache,
                    stream=Utf8Stream(tokenizer) if emit else None,
                    emit=emit,
                    progress=progress,
                )
                completions.append(tokenizer.decode(new))
                if on_sample_end is not None:
                    on_sample_end(i, completions[-1])
    finally:
        model.train(was_training)
    return completions


def _mask_beyond(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Never sample ids the tokenizer cannot decode (a model vocab padded to e.g. 50304)."""
    if logits.size(-1) > vocab_size:
        logits = logits.clone()
        logits[:, vocab_size:] = float("-inf")
    return logits


def _generate_one(
    model: nn.Module,
    block_size: int,
    prompt_ids: list[int],
    *,
    max_tokens: int,
    sample: Callable[[torch.Tensor], torch.Tensor],
    eot: int | None,
    use_cache: bool,
    stream: Utf8Stream | None,
    emit: Callable[[str], None] | None,
    progress: Callable[[int], None] | None = None,
) -> list[int]:
    """The token loop for one sample; returns the new ids (end-of-text excluded)."""
    device = next(model.parameters()).device
    seq = list(prompt_ids)
    new: list[int] = []
    cache = model.new_kv_cache(1) if use_cache else None
    pending = seq  # tokens the cache has not seen yet
    for _ in range(max_tokens):
        if cache is None:
            idx = torch.tensor([seq[-block_size:]], device=device)  # (1, T): the whole prefix, every step
            # a throwaway cache only makes the model compute last-position logits (as nanoGPT does)
            logits, _ = model(idx, kv_cache=model.new_kv_cache(1, max_len=idx.size(1)))
        else:
            if cache.length + len(pending) > block_size:
                # context full: rebuild the cache from the last half block and go on
                cache = model.new_kv_cache(1)
                pending = seq[-(block_size // 2 or 1) :]
            logits, _ = model(torch.tensor([pending], device=device), kv_cache=cache)  # (1, 1, vocab)
        token = int(sample(logits[:, -1, :]))  # .item(): a device-to-host sync per token, unavoidable
        if token == eot:
            break
        seq.append(token)
        new.append(token)
        pending = [token]
        if progress is not None:
            progress(1)
        if stream is not None and emit is not None:
            text = stream.push(token)
            if text:
                emit(text)
    if stream is not None and emit is not None:
        tail = stream.flush()
        if tail:
            emit(tail)
    return new


def load_for_generation(
    workspace: Workspace,
    path: Path,
    *,
    device: str = "auto",
    tokenizer_file: str | None = None,
) -> tuple[GPT, Tokenizer, dict]:
    """Load the model (eval mode) of the checkpoint directory ``path`` and its own tokenizer
    (a checkpoint name is resolved by the caller: ``lmforge.runs.names.resolve_checkpoint``)."""
    from lmforge.checkpoint.store import load_model
    from lmforge.data.tokenizer import tokenizer_from_identity
    from lmforge.device import resolve_device

    path = Path(path)
    model, config, meta = load_model(path, device=resolve_device(device))
    identity = meta.get("tokenizer") or {"name": config.tokenizer}
    tokenizer = tokenizer_from_identity(identity, workspace=workspace, tokenizer_file=tokenizer_file)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise CheckpointError(
            f"checkpoint {path} has a vocabulary of {config.model.vocab_size}, "
            f"smaller than its tokenizer's {tokenizer.vocab_size} ids",
            "the checkpoint's metadata names the wrong tokenizer",
        )
    return model, tokenizer, meta
