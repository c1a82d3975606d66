"""tiktoken ranks <-> GPT-2's byte-level BPE tokenizer files (``vocab.json`` + ``merges.txt``,
and the fast tokenizer's ``tokenizer.json`` with the tokenizer's own split pattern).

A token's string in ``vocab.json`` is its bytes through GPT-2's ``bytes_to_unicode``
table; the merges are recovered from the ranks (each token of rank r is the one pair
that BPE with ranks < r leaves). Reading the files back gives the same ranks and so
the same tokenizer identity. ``transformers`` is never imported: the files are
plain JSON and text (``tokenizer.json`` is built with Hugging Face ``tokenizers``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.data.bpe import bytes_to_unicode, onig_pattern
from lmforge.data.tokenizer import ENDOFTEXT, GPT2_PATTERN, Tokenizer

if TYPE_CHECKING:
    from lmforge.workspace import Workspace

VOCAB_JSON = "vocab.json"
MERGES_TXT = "merges.txt"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG_JSON = "tokenizer_config.json"
SPECIAL_TOKENS_JSON = "special_tokens_map.json"
TOKENIZER_FILE_NAMES = (VOCAB_JSON, MERGES_TXT, TOKENIZER_JSON, TOKENIZER_CONFIG_JSON, SPECIAL_TOKENS_JSON)


def tiktoken_pattern(onig: str) -> str:
    """The inverse of ``onig_pattern`` for lmforge's patterns (``SPLIT_PATTERNS``)."""
    from lmforge.data.tokenizer import SPLIT_PATTERNS

    for pattern in SPLIT_PATTERNS.values():
        if onig_pattern(pattern) == onig:
            return pattern
    return onig.replace(r"\z", "$")


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
    specials = tokenizer.special_tokens
    for token in specials:
        vocab[token] = tokenizer.encoding._special_tokens[token]
    merges = recover_merges(ranks)
    special = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT}
    if len(specials) > 1:
        special["additional_special_tokens"] = specials[:-1]
    gpt2_split = tokenizer.pattern == GPT2_PATTERN
    config = {
        # GPT2Tokenizer's slow form splits with GPT-2's pattern; another one lives only in tokenizer.json
        "tokenizer_class": "GPT2Tokenizer" if gpt2_split else "PreTrainedTokenizerFast",
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
        TOKENIZER_JSON: fast_tokenizer_json(ranks, merges, tokenizer.pattern, specials),
        TOKENIZER_CONFIG_JSON: json.dumps(config, indent=2),
        SPECIAL_TOKENS_JSON: json.dumps(special, indent=2),
    }


def fast_tokenizer_json(
    ranks: dict[bytes, int], merges: list[tuple[bytes, bytes]], pattern: str, specials: list[str]
) -> str:
    """A Hugging Face ``tokenizer.json`` giving the same ids as tiktoken with ``ranks`` and
    ``pattern``: the pattern's pieces, GPT-2's byte-to-character map, BPE with ``merges``,
    and the special tokens after the ranks."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as FastTokenizer

    vocab = {_token_str(tok): rank for tok, rank in ranks.items()}
    bpe = models.BPE(vocab=vocab, merges=[(_token_str(a), _token_str(b)) for a, b in merges])
    fast = FastTokenizer(bpe)
    fast.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(onig_pattern(pattern)), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    fast.decoder = decoders.ByteLevel()
    fast.add_special_tokens(specials)  # ids len(ranks), len(ranks) + 1, ... in order
    return fast.to_str()


def read_fast_tokenizer_json(path: str | os.PathLike) -> tuple[dict[bytes, int], str, list[str]] | None:
    """(ranks, tiktoken split pattern, special tokens) of a ``tokenizer.json`` that
    ``fast_tokenizer_json`` wrote, or None when it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        vocab = data["model"]["vocab"]
        pieces = data["pre_tokenizer"]["pretokenizers"]
        pattern = tiktoken_pattern(pieces[0]["pattern"]["Regex"])
        added = sorted(data.get("added_tokens") or [], key=lambda t: t["id"])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    decoder = {c: b for b, c in bytes_to_unicode().items()}
    try:
        ranks = {bytes(decoder[c] for c in tok): int(i) for tok, i in vocab.items()}
    except KeyError:
        return None
    specials = [t["content"] for t in added if t.get("special")]
    if [t["id"] for t in added] != list(range(len(ranks), len(ranks) + len(added))):
        return None
    if not specials or specials[-1] != ENDOFTEXT or len(specials) != len(added):
        return None
    return ranks, pattern, specials


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


def install_exported_tokenizer(
    src: str | os.PathLike, identity: dict[str, Any], workspace: Workspace
) -> list[str]:
    """Save the tokenizer an lmforge export names (``identity``) into the workspace from the
    export's ``tokenizer.json``, when the workspace does not have it; notes for the user."""
    from lmforge.data.tokenizer import (
        TOKENIZER_NAMES,
        content_sha256,
        workspace_ranks_file,
        write_workspace_tokenizer,
    )

    name = identity.get("name")
    if not name or name in TOKENIZER_NAMES or workspace_ranks_file(workspace, name).exists():
        return []
    found = read_fast_tokenizer_json(Path(src) / TOKENIZER_JSON)
    if found is None or content_sha256(*found) != identity.get("sha256"):
        return [f"tokenizer '{name}' is not in this workspace and {src} holds no copy of it"]
    ranks, pattern, specials = found
    path = write_workspace_tokenizer(workspace, name, ranks, pattern, specials, {"imported_from": str(src)})
    return [f"the model's tokenizer '{name}' was saved as {path}"]
