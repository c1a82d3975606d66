"""tiktoken ranks <-> GPT-2's byte-level BPE tokenizer files (``vocab.json`` + ``merges.txt``).

A token's string in ``vocab.json`` is its bytes through GPT-2's ``bytes_to_unicode``
table; the merges are recovered from the ranks (each token of rank r is the one pair
that BPE with ranks < r leaves). Reading the files back gives the same ranks and so
the same tokenizer identity. ``transformers`` is never imported: the files are
plain JSON and text.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path

from lmforge.data.tokenizer import ENDOFTEXT, Tokenizer

VOCAB_JSON = "vocab.json"
MERGES_TXT = "merges.txt"


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


def _token_str(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merges, in rank order, that produce tiktoken ``ranks``: the token of
    rank r is the single pair that byte-pair merging with ranks < r leaves."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = _bpe(ranks, token, max_rank=rank)
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not one merge of lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


def _bpe(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    parts = [bytes([b]) for b in token]
    while len(parts) > 1:
        best_i, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best_i, best_rank = i, r
        if best_i < 0:
            break
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts


def hf_tokenizer_files(tokenizer: Tokenizer, model_max_length: int) -> dict[str, str]:
    """``vocab.json``, ``merges.txt`` and the tokenizer config of a Hugging Face GPT-2
    tokenizer with the same token ids as ``tokenizer``. ``ValueError`` when its ranks are
    not a byte-level BPE (every single byte a token, every longer token one merge)."""
    ranks: dict[bytes, int] = tokenizer.encoding._mergeable_ranks
    if any(bytes([b]) not in ranks for b in range(256)):
        raise ValueError(f"tokenizer {tokenizer.name!r} does not have every single byte as a token")
    vocab = {_token_str(tok): rank for tok, rank in ranks.items()}
    vocab[ENDOFTEXT] = tokenizer.eot_token
    merges = recover_merges(ranks)
    special = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": model_max_length,
        "add_prefix_space": False,
        "add_bos_token": False,
        "errors": "replace",
        **special,
    }
    merges_txt = "#version: 0.2\n" + "".join(f"{_token_str(a)} {_token_str(b)}\n" for a, b in merges)
    return {
        VOCAB_JSON: json.dumps(dict(sorted(vocab.items(), key=lambda kv: kv[1])), ensure_ascii=False),
        MERGES_TXT: merges_txt,
        "tokenizer_config.json": json.dumps(config, indent=2),
        "special_tokens_map.json": json.dumps(special, indent=2),
    }


def ranks_from_hf_tokenizer(path: str | os.PathLike) -> dict[bytes, int] | None:
    """tiktoken ranks equivalent to a directory's GPT-2 ``vocab.json`` + ``merges.txt``, or
    None when there are none or they are not representable (ids of the byte tokens
    first and of each merge's result in merge order, ``<|endoftext|>`` right after)."""
    path = Path(path)
    if not ((path / VOCAB_JSON).is_file() and (path / MERGES_TXT).is_file()):
        return None
    try:
        vocab = json.loads((path / VOCAB_JSON).read_text(encoding="utf-8"))
        lines = (path / MERGES_TXT).read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError):
        return None
    decoder = {c: b for b, c in bytes_to_unicode().items()}
    ranks: dict[bytes, int] = {}
    for tok, i in vocab.items():
        if tok == ENDOFTEXT:
            continue
        try:
            ranks[bytes(decoder[c] for c in tok)] = int(i)
        except KeyError:
            return None  # a special token other than <|endoftext|>
    n = len(ranks)
    if sorted(ranks.values()) != list(range(n)) or vocab.get(ENDOFTEXT) != n:
        return None
    if any(ranks.get(bytes([b]), 256) >= 256 for b in range(256)):
        return None
    merges = [ln.split(" ") for ln in lines if ln and not ln.startswith("#version")]
    if len(merges) != n - 256:
        return None
    for i, pair in enumerate(merges):
        if len(pair) != 2 or vocab.get(pair[0] + pair[1]) != 256 + i:
            return None
    return ranks
