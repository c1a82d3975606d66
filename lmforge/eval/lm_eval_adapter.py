"""An lm-eval-harness model over lmforge's own model and tokenizer (extra ``[eval]``).

``LmforgeLM`` is a ``lm_eval.api.model.TemplateLM``: lm-eval turns each request's
strings into token ids through ``tok_encode`` (its own context/continuation
split, the end-of-text token as the context of an empty one), and this class
scores them:

- ``loglikelihood`` -> ``harness.score_pairs``: the last ``L + 1`` tokens of
  context + continuation, the continuation's log-probabilities, and whether
  each of its tokens is the argmax (lm-eval's ``is_greedy``);
- ``loglikelihood_rolling`` -> ``harness.rolling_loglikelihoods``: disjoint
  windows of the model's context after the end-of-text token;
- ``generate_until`` -> greedy (or sampled, with ``do_sample``) decoding with
  the KV cache, prompts of the same length batched together, stopped at the
  request's ``until`` strings or the end-of-text token.

Numbers equal lm-eval's ``HFLM`` on the Hugging Face export of the same
checkpoint (fp32): the same windows, the same fp32 log-softmax over the whole
output. ``lm_eval`` is imported only here (and in ``tasks``' functions), so lmforge
runs without it. Each kind of request reports its progress through the ``progress``
factory it is given.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
import torch.nn as nn

from lmforge.data.tokenizer import Tokenizer
from lmforge.distributed import unwrap as unwrap_model
from lmforge.eval.evaluate import Progress, ProgressFactory, autocast
from lmforge.eval.generate import sample_next
from lmforge.eval.harness import rolling_loglikelihoods, score_pairs
from lmforge.eval.options import EvalOptions
from lmforge.eval.tasks import require_lm_eval

require_lm_eval()

from lm_eval.api.model import TemplateLM  # noqa: E402
from lm_eval.models.utils import (  # noqa: E402
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
)

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for generate_until


class LmforgeLM(TemplateLM):
    """lm-eval's view of an lmforge model: ``LmforgeLM(model, tokenizer, batch_size=8)``."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        *,
        batch_size: int = 8,
        dtype: str = "fp32",
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        progress: ProgressFactory | None = None,
        label: str = "model",
    ) -> None:
        super().__init__()
        self.model = model
        self.lm_tokenizer = tokenizer
        self.batch_size = batch_size
        self.dtype = dtype
        self.options = EvalOptions(batch_size=batch_size, dtype=dtype)
        self.progress, self.label = progress, label
        self.max_gen_toks = max_gen_toks
        self.max_length = unwrap_model(model).config.block_size
        self._device = next(model.parameters()).device

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def eot_token_id(self) -> int:
        return self.lm_tokenizer.eot_token

    @property
    def tokenizer_name(self) -> str:
        return self.lm_tokenizer.name

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        # a GPT-2 style tokenizer adds no special tokens to text (HF's add_bos_token is False)
        return self.lm_tokenizer.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.lm_tokenizer.decode(tokens)

    def _loglikelihood_tokens(
        self, requests, disable_tqdm: bool = False, **kwargs
    ) -> list[tuple[float, bool]]:
        pairs = [(list(ctx), list(cont)) for _, ctx, cont in requests]
        advance = self._start("loglikelihood", sum(len(cont) for _, cont in pairs))
        return score_pairs(self.model, pairs, self.options, progress=advance)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        docs = [self.tok_encode(req.args[0]) for req in requests]
        advance = self._start("loglikelihood_rolling", sum(len(d) for d in docs))
        return rolling_loglikelihoods(
            self.model, docs, self.options, prefix=self.prefix_token_id, progress=advance
        )

    def _start(self, kind: str, total: int, unit: str = "tokens") -> Progress | None:
        """A progress bar (or log lines) for one kind of request, counted in ``unit``."""
        return None if self.progress is None else self.progress(f"{self.label} {kind}", total, unit=unit)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Prompts grouped by (generation settings, prompt length) so that a batch needs
        no padding: the KV cache holds one length for every row."""
        results: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, list[int]]]] = defaultdict(list)
        settings: dict[tuple, dict[str, Any]] = {}
        eos = self.tok_decode([self.eot_token_id])
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            kwargs["until"] = handle_stop_sequences(kwargs.get("until"), eos=eos)
            max_gen = int(kwargs["max_gen_toks"])
            if max_gen >= self.max_length:
                raise ValueError(
                    f"max_gen_toks {max_gen} leaves no room for a prompt in a context of {self.max_length}"
                )
            ids = self.tok_encode(context)[-(self.max_length - max_gen) :] or [self.eot_token_id]
            key = (repr(sorted(kwargs.items())), len(ids))
            settings[key] = kwargs
            groups[key].append((i, ids))
        advance = self._start("generate_until", len(requests), unit="requests")
        for key, items in groups.items():
            for start in range(0, len(items), self.batch_size):
                batch = items[start : start + self.batch_size]
                texts = self._generate([ids for _, ids in batch], settings[key])
                for (i, _), text in zip(batch, texts, strict=True):
                    results[i] = text
                if advance is not None:
                    advance(len(batch))
        return [r if r is not None else "" for r in results]

    def _generate(self, prompts: list[list[int]], kwargs: dict[str, Any]) -> list[str]:
        model = unwrap_model(self.model)
        until, max_gen = kwargs["until"], int(kwargs["max_gen_toks"])
        sample = bool(kwargs.get("do_sample")) and float(kwargs.get("temperature") or 0.0) > 0.0
        B, T = len(prompts), len(prompts[0])
        new: list[list[int]] = [[] for _ in range(B)]
        done = [False] * B
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(), autocast(self.device, self.dtype):
                cache = model.new_kv_cache(B, max_len=T + max_gen)
                x = torch.tensor(prompts, device=self.device)  # (B, T) the prompts, once
                for _ in range(max_gen):
                    logits, _ = model(x, kv_cache=cache)  # (B, 1, vocab): the last position only
                    last = logits[:, -1, : self.lm_tokenizer.vocab_size].float()
                    if sample:
                        top_k = kwargs.get("top_k")
                        top_p = kwargs.get("top_p")
                        next_ids = sample_next(
                            last, temperature=float(kwargs["temperature"]), top_k=top_k, top_p=top_p
                        )
                    else:
                        next_ids = last.argmax(-1)
                    tokens = next_ids.view(-1).tolist()  # a device-to-host sync per step: stop checks need it
                    for b, t in enumerate(tokens):
                        if done[b]:
                            continue
                        if t == self.eot_token_id:
                            done[b] = True
                            continue
                        new[b].append(t)
                        text = self.tok_decode(new[b])
                        if any(s in text for s in until):
                            done[b] = True
                    if all(done):
                        break
                    x = next_ids.view(B, 1)
        finally:
            model.train(was_training)
        return [postprocess_generated_text(self.tok_decode(ids), until, None) for ids in new]
