import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.data.tokenizer import bytes_tokenizer
from lmforge.errors import UsageError
from lmforge.eval.generate import PromptCroppedWarning, Utf8Stream, generate, sample_next
from lmforge.model.gpt import GPT

V = 257


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    m = GPT(ModelConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0))
    return m.eval()


@pytest.fixture(scope="module")
def tok():
    return bytes_tokenizer()


def ids_of(tok, text: str) -> list[int]:
    return list(text.encode("utf-8"))


def test_greedy_with_and_without_cache_is_identical(model, tok):
    # 5 prompt tokens + 20 new stay inside the context of 32: both see the same prefix at every step
    a = generate(model, tok, "hello", max_tokens=20, greedy=True, stop_at_eot=False)
    b = generate(model, tok, "hello", max_tokens=20, greedy=True, stop_at_eot=False, use_cache=False)
    assert a == b


def test_cache_matches_full_forward_logits(model, tok):
    idx = torch.tensor([ids_of(tok, "the history of")])
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_kv_cache(1)
        model(idx[:, :5], kv_cache=cache)
        steps = [model(idx[:, t : t + 1], kv_cache=cache)[0][:, -1] for t in range(5, idx.size(1))]
    torch.testing.assert_close(torch.cat(steps), full[0, 5:], rtol=1e-4, atol=1e-4)


def test_top_k_one_and_tiny_top_p_equal_greedy(model, tok):
    greedy = generate(model, tok, "abc", max_tokens=15, greedy=True, stop_at_eot=False)
    top_k = generate(model, tok, "abc", max_tokens=15, temperature=1.0, top_k=1, seed=3, stop_at_eot=False)
    top_p = generate(model, tok, "abc", max_tokens=15, temperature=1.0, top_p=1e-6, seed=3, stop_at_eot=False)
    assert greedy == top_k == top_p


def test_same_seed_same_samples(model, tok):
    kwargs = dict(max_tokens=20, temperature=1.0, num_samples=2, stop_at_eot=False)
    a = generate(model, tok, "xy", seed=7, **kwargs)
    b = generate(model, tok, "xy", seed=7, **kwargs)
    c = generate(model, tok, "xy", seed=8, **kwargs)
    assert a == b and len(a) == 2
    assert a != c


def test_sample_next_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, top_k=2, generator=g)) for _ in range(200)}
    assert draws == {2, 3}
    # p = 0.6: token 3 has 0.64 of the mass, so the nucleus is {3}
    assert {int(sample_next(logits, top_p=0.6, generator=g)) for _ in range(50)} == {3}
    # p = 0.9: tokens 3 (0.64) and 2 (0.24) reach 0.88 < 0.9, so 1 joins
    assert {int(sample_next(logits, top_p=0.9, generator=g)) for _ in range(400)} == {1, 2, 3}


class EotAfter(torch.nn.Module):
    """A GPT stand-in that says 'a', 'b', then end-of-text: same forward signature and cache."""

    def __init__(self, script: list[int]) -> None:
        super().__init__()
        self.inner = GPT(ModelConfig(vocab_size=V, block_size=32, n_layer=1, n_head=1, n_embd=8, dropout=0.0))
        self.config = self.inner.config
        self.script = script
        self.calls = 0

    def new_kv_cache(self, batch_size, max_len=None):
        return self.inner.new_kv_cache(batch_size, max_len)

    def forward(self, idx, targets=None, kv_cache=None):
        self.inner(idx, kv_cache=kv_cache)
        logits = torch.full((idx.size(0), 1, V), -1e9)
        logits[:, :, self.script[min(self.calls, len(self.script) - 1)]] = 0.0
        self.calls += 1
        return logits, None


def test_stops_at_end_of_text(tok):
    script = [ord("a"), ord("b"), tok.eot_token, ord("c")]
    assert generate(EotAfter(script), tok, "x", max_tokens=10, greedy=True) == ["ab"]
    kept = generate(EotAfter(script), tok, "x", max_tokens=4, greedy=True, stop_at_eot=False)
    assert kept == ["ab<|endoftext|>c"]


def test_utf8_split_across_tokens_never_streams_a_replacement_char(tok):
    # "é" is two bytes and "€" three: with the byte tokenizer each arrives over several steps
    script = list("é€!".encode()) + [tok.eot_token]
    pieces = []
    out = generate(
        EotAfter(script), tok, "x", max_tokens=20, greedy=True, on_text=lambda i, t: pieces.append(t)
    )
    assert out == ["é€!"]
    assert "".join(pieces) == "é€!"
    assert all("\ufffd" not in p for p in pieces)
    assert pieces == ["é", "€", "!"]


def test_utf8_stream_flushes_an_unfinished_character(tok):
    stream = Utf8Stream(tok)
    assert stream.push(0xE2) == "" and stream.push(0x82) == ""
    assert stream.flush() == "\ufffd"


def test_long_prompt_is_cropped_with_a_warning(model, tok):
    prompt = "abcdefghij" * 5  # 50 tokens > context 32
    with pytest.warns(PromptCroppedWarning, match="only its last 32 tokens"):
        a = generate(model, tok, prompt, max_tokens=5, greedy=True, stop_at_eot=False)
    messages = []
    b = generate(
        model, tok, prompt[-32:], max_tokens=5, greedy=True, stop_at_eot=False, on_warning=messages.append
    )
    assert a == b and messages == []
    generate(model, tok, prompt, max_tokens=1, greedy=True, on_warning=messages.append)
    assert len(messages) == 1


def test_generation_slides_past_the_context(model, tok):
    calls = []
    orig = model.new_kv_cache

    def counting(*args, **kwargs):
        calls.append(1)
        return orig(*args, **kwargs)

    model.new_kv_cache = counting
    try:
        (text,) = generate(model, tok, "hi", max_tokens=100, temperature=1.0, seed=0, stop_at_eot=False)
    finally:
        del model.new_kv_cache
    assert len(calls) > 1  # the cache was rebuilt when the context filled


def test_empty_prompt_starts_from_end_of_text(model, tok):
    (text,) = generate(model, tok, "", max_tokens=5, greedy=True, stop_at_eot=False)
    assert isinstance(text, str)


def test_stream_pieces_join_to_the_completion(model, tok):
    pieces: dict[int, list[str]] = {0: [], 1: []}
    out = generate(
        model,
        tok,
        "q",
        max_tokens=30,
        temperature=1.0,
        seed=1,
        num_samples=2,
        on_text=lambda i, t: pieces[i].append(t),
    )
    assert ["".join(pieces[0]), "".join(pieces[1])] == out


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"temperature": 0.0}, "use --greedy"),
        ({"temperature": -1.0}, "--temperature must be > 0"),
        ({"top_p": 0.0}, r"--top-p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"--top-p must be in \(0, 1\]"),
        ({"top_k": 0}, "--top-k must be >= 1"),
        ({"num_samples": 0}, "--num-samples"),
        ({"max_tokens": -1}, "--max-tokens"),
    ],
)
def test_bad_sampling_options(model, tok, kwargs, match):
    with pytest.raises(UsageError, match=match) as info:
        generate(model, tok, "a", **kwargs)
    assert info.value.exit_code == 2


def test_greedy_ignores_temperature(model, tok):
    assert generate(model, tok, "a", max_tokens=3, greedy=True, temperature=0.0)
