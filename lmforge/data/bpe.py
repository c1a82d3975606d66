"""Byte-level BPE training with Hugging Face ``tokenizers`` (Rust), returned as tiktoken ranks.

The text is split with a tiktoken pattern (GPT-2's or GPT-4's), every piece is mapped to
bytes through GPT-2's byte-to-character table, and the BPE trainer starts from all 256
bytes, so any text encodes without an unknown token. The result is converted to tiktoken's
``bytes -> rank`` form: the 256 single bytes get ranks 0..255 (by byte value), each merged
token the next rank in the order the trainer created it. tiktoken merges the pair whose
concatenation has the lowest rank, which is the trainer's merge order, so lmforge encodes
with tiktoken's speed and the same ids the Hugging Face tokenizer gives.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

from lmforge.errors import UsageError

MIN_VOCAB = 256 + 1  # every byte, and end-of-text


def onig_pattern(pattern: str) -> str:
    """A tiktoken split pattern (Rust ``fancy-regex``) for Hugging Face ``tokenizers``
    (Oniguruma, Ruby syntax), with the same matches: there ``$`` is an end of *line* (the
    end of text is ``\\z``) and ``{1,3}+`` repeats ``{1,3}`` instead of being possessive
    (possessive or not, nothing after it in its branch could backtrack into it)."""
    return pattern.replace("$", r"\z").replace("}+", "}")


@cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (``encoder.py`` of the release)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def train_bpe_ranks(
    texts: Iterable[str], vocab_size: int, pattern: str, num_special: int = 1
) -> dict[bytes, int]:
    """Train on ``texts`` and return ranks for ``vocab_size - num_special`` tokens (fewer
    when the text has no more pairs to merge); the special tokens take the ids after them."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    num_ranks = vocab_size - num_special
    if num_ranks < 256:
        raise UsageError(
            f"--vocab-size {vocab_size} leaves no room for the 256 byte tokens and {num_special} special",
            f"use --vocab-size {256 + num_special} or more (e.g. 32768)",
        )
    tok = Tokenizer(models.BPE())  # no unk_token: the byte alphabet covers every input
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(onig_pattern(pattern)), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=num_ranks,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return ranks_from_byte_level_vocab(tok.get_vocab())


def ranks_from_byte_level_vocab(vocab: dict[str, int]) -> dict[bytes, int]:
    """tiktoken ranks from a byte-level BPE vocabulary (token string -> id): single bytes
    first by byte value, then longer tokens in id (= merge) order."""
    decoder = {c: b for b, c in bytes_to_unicode().items()}
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    ranks = {bytes([b]): b for b in range(256)}
    for text, _ in by_id:
        token = bytes(decoder[c] for c in text)
        if token not in ranks:
            ranks[token] = len(ranks)
    return ranks
