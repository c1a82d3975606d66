import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmforge.config import ModelConfig
from lmforge.errors import UsageError
from lmforge.eval.evaluate import EvalResult, evaluate_tokens, sliding_windows, split_row
from lmforge.eval.options import EvalOptions
from lmforge.model.gpt import GPT

V = 257


def tiny_gpt(block_size: int = 16, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=V, block_size=block_size, n_layer=2, n_head=2, n_embd=32, dropout=0.0))


def brute_force_nll(model: GPT, tokens: torch.Tensor, context: int) -> float:
    """Score token j from the `context` tokens before it, one forward per token."""
    total = 0.0
    with torch.no_grad():
        for j in range(1, len(tokens)):
            ctx = tokens[max(0, j - context) : j]
            logits, _ = model(ctx[None])
            total -= F.log_softmax(logits[0, -1].double(), dim=-1)[tokens[j]].item()
    return total


def test_uniform_model_has_perplexity_equal_to_vocab():
    model = tiny_gpt()
    with torch.no_grad():
        model.transformer.wte.weight.zero_()  # tied lm_head: every logit is 0
    tokens = np.random.default_rng(0).integers(0, V, 200).astype(np.uint16)
    result = evaluate_tokens(model, tokens, EvalOptions(block_size=16, stride=8, batch_size=4))
    assert result.tokens == 199
    assert result.ppl == pytest.approx(V, rel=1e-5)
    assert result.loss == pytest.approx(math.log(V), rel=1e-6)


@pytest.mark.parametrize("n", [2, 5, 16, 17, 50, 61])
@pytest.mark.parametrize("block_size,stride", [(8, 8), (8, 1), (8, 3), (8, 4), (4, 4)])
def test_windows_score_every_target_once(n, block_size, stride):
    windows = sliding_windows(n, block_size, stride)
    scored = []
    for begin, end, first in windows:
        assert 0 <= begin <= first < end <= n - 1
        assert end - begin == min(block_size, n - 1)  # full-length windows batch without padding
        scored += range(first, end)
        if begin > 0:  # every scored target has at least block_size - stride tokens before its input
            assert first - begin >= block_size - stride
    assert scored == list(range(n - 1))


@pytest.mark.parametrize("stride", [1, 3, 8])
def test_sliding_window_equals_brute_force_at_stride_one(stride):
    model = tiny_gpt().eval()
    tokens = torch.randint(0, V, (40,), generator=torch.Generator().manual_seed(1))
    result = evaluate_tokens(model, tokens, EvalOptions(block_size=16, stride=stride, batch_size=3))
    assert result.tokens == 39
    if stride == 1:  # every token sees the full block of context
        assert result.loss_sum == pytest.approx(brute_force_nll(model, tokens, 16), rel=1e-5)
    else:  # checked window by window: each target scored from its own window's prefix
        expected = 0.0
        for begin, end, first in sliding_windows(40, 16, stride):
            for t in range(first, end):
                ctx = tokens[begin : t + 1]
                with torch.no_grad():
                    logits, _ = model(ctx[None])
                expected -= F.log_softmax(logits[0, -1].double(), -1)[tokens[t + 1]].item()
        assert result.loss_sum == pytest.approx(expected, rel=1e-5)


def test_non_overlapping_equals_brute_force_with_block_context():
    model = tiny_gpt().eval()
    tokens = torch.randint(0, V, (49,), generator=torch.Generator().manual_seed(2))  # 48 targets = 3 blocks
    result = evaluate_tokens(model, tokens, EvalOptions(block_size=16, stride=16, batch_size=2))
    expected = 0.0
    for j in range(1, 49):
        start = ((j - 1) // 16) * 16
        with torch.no_grad():
            logits, _ = model(tokens[start:j][None])
        expected -= F.log_softmax(logits[0, -1].double(), -1)[tokens[j]].item()
    assert result.loss_sum == pytest.approx(expected, rel=1e-5)


def test_batch_size_and_input_type_do_not_change_the_result():
    model = tiny_gpt()
    tokens = np.random.default_rng(3).integers(0, V, 100).astype(np.uint16)
    a = evaluate_tokens(model, tokens, EvalOptions(block_size=16, stride=5, batch_size=1))
    b = evaluate_tokens(
        model, torch.from_numpy(tokens.astype(np.int64)), EvalOptions(block_size=16, stride=5, batch_size=7)
    )
    c = evaluate_tokens(model, tokens.tolist(), EvalOptions(block_size=16, stride=5, batch_size=64))
    assert a.tokens == b.tokens == c.tokens
    assert a.loss_sum == pytest.approx(b.loss_sum, rel=1e-6) == pytest.approx(c.loss_sum, rel=1e-6)


@pytest.mark.parametrize("world_size", [2, 3, 5])
def test_rank_results_sum_to_the_single_process_result(world_size):
    model = tiny_gpt()
    tokens = np.random.default_rng(4).integers(0, V, 90).astype(np.uint16)
    whole = evaluate_tokens(model, tokens, EvalOptions(block_size=16, stride=4, batch_size=2))
    parts = [
        evaluate_tokens(
            model, tokens, EvalOptions(block_size=16, stride=4, batch_size=2, rank=r, world_size=world_size)
        )
        for r in range(world_size)
    ]
    assert sum(p.tokens for p in parts) == whole.tokens
    assert sum(p.loss_sum for p in parts) == pytest.approx(whole.loss_sum, rel=1e-6)


def test_max_tokens_scores_the_start_and_progress_counts_targets():
    model = tiny_gpt()
    tokens = np.random.default_rng(5).integers(0, V, 100).astype(np.uint16)
    seen = []
    options = EvalOptions(block_size=16, stride=8, batch_size=2, max_tokens=30)
    part = evaluate_tokens(model, tokens, options, progress=seen.append)
    assert part.tokens == 30 and sum(seen) == 30
    same = evaluate_tokens(model, tokens[:31], EvalOptions(block_size=16, stride=8, batch_size=2))
    assert part.loss_sum == pytest.approx(same.loss_sum)


def test_model_mode_is_restored():
    model = tiny_gpt().train()
    evaluate_tokens(model, list(range(40)), EvalOptions(block_size=16, stride=8, batch_size=2))
    assert model.training


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"block_size": 32, "stride": 8}, "larger than the model's context of 16"),
        ({"block_size": 16, "stride": 17}, "--stride must be between 1 and the block size"),
        ({"block_size": 16, "stride": 0}, "--stride must be between 1"),
        ({"block_size": 16, "stride": 8, "batch_size": 0}, "--batch-size"),
        ({"block_size": 16, "stride": 8, "max_tokens": 0}, "--max-tokens"),
    ],
)
def test_bad_window_options(kwargs, match):
    kwargs = {"batch_size": 2, **kwargs}
    with pytest.raises(UsageError, match=match) as info:
        evaluate_tokens(tiny_gpt(), list(range(40)), EvalOptions(**kwargs))
    assert info.value.exit_code == 2


def test_token_ids_outside_the_vocabulary():
    with pytest.raises(UsageError, match="outside the model's vocabulary"):
        evaluate_tokens(tiny_gpt(), [1, 2, 300, 4], EvalOptions(block_size=4, stride=4, batch_size=1))


def test_word_and_byte_normalisation():
    result = EvalResult(loss_sum=1000.0, tokens=499)
    meta = {"words": 100, "bytes": 400}
    row = split_row("best", "test", result, meta, split_tokens=500)
    assert row.loss == pytest.approx(1000 / 499)
    assert row.word_ppl == pytest.approx(math.exp(10.0))
    assert row.bpb == pytest.approx(1000 / math.log(2) / 400)
    assert row.note is None
    partial = split_row("best", "test", EvalResult(loss_sum=10.0, tokens=5), meta, split_tokens=500)
    assert partial.word_ppl is None and partial.bpb is None and "partial split" in partial.note
    assert set(row.to_dict()) >= {"checkpoint", "split", "loss", "ppl", "word_ppl", "bpb", "tokens"}


def test_bytes_tokenizer_bpb_of_uniform_model_is_log2_vocab():
    """With one token per byte, bits per byte is the loss in bits: log2(257) for uniform logits."""
    result = EvalResult(loss_sum=math.log(V) * 999, tokens=999)
    row = split_row("m", "validation", result, {"words": 200, "bytes": 999}, split_tokens=1000)
    assert row.bpb == pytest.approx(math.log2(V))
