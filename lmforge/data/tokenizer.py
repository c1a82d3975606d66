"""Tokenizers: GPT-2's BPE through tiktoken, a byte-level tokenizer, and the ones
``lmforge tokenizer train`` makes (``tokenizers/NAME.tiktoken`` + ``NAME.json``).

All are ``tiktoken.Encoding`` objects behind one small class, so datasets,
training and generation never care which one they hold. A tokenizer has an
*identity*, ``{"name": ..., "sha256": ...}`` (the hash covers its ranks), that
is stored with every dataset and checkpoint: equal identities mean the same
token ids for the same text. A trained tokenizer's ``NAME.json`` names its split
pattern and special tokens; its hash covers those too (``content_sha256``).

GPT-2's ranks are looked up in this order, so an offline machine never waits
on a download that cannot succeed:

1. ``tokenizer_file`` (``--tokenizer-file PATH``),
2. the ``LMFORGE_TOKENIZER_FILE`` environment variable,
3. ``tokenizers/gpt2.tiktoken`` in the workspace,
4. ``tiktoken.get_encoding("gpt2")`` (tiktoken's cache, else a download with a
   time limit).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tiktoken

from lmforge.errors import DataError, LmforgeError, UsageError
from lmforge.fileio import copy_file_atomic

if TYPE_CHECKING:
    from lmforge.workspace import Workspace

ENV_TOKENIZER_FILE = "LMFORGE_TOKENIZER_FILE"
ENDOFTEXT = "<|endoftext|>"
TOKENIZER_NAMES = ("gpt2", "bytes")
RANKS_SUFFIX = ".tiktoken"  # tiktoken ranks files, in the workspace's tokenizers/ among others

# GPT-2's split pattern (tiktoken's r50k/gpt2 form, equivalent to the original release's).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# GPT-4's split pattern (tiktoken's cl100k_base): digits in groups of 3, case-insensitive contractions.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
SPLIT_PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}
META_SUFFIX = ".json"  # a trained tokenizer's description beside its ranks: tokenizers/NAME.json
# The bytes tokenizer keeps text in long pieces: with only single-byte ranks there is nothing to merge.
BYTES_PATTERN = r"""[\s\S]{1,4096}"""
GPT2_NUM_RANKS = 50256
# sha256 of GPT-2's ranks in tiktoken format (the same as r50k_base.tiktoken from OpenAI).
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# How long tiktoken may try to download GPT-2's files before we give up with a clear error.
DOWNLOAD_TIMEOUT_S = 20.0

_GPT2_URLS = (
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
)


def default_num_threads() -> int:
    """The CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def ranks_file_bytes(mergeable_ranks: dict[bytes, int]) -> bytes:
    """The ranks in tiktoken's file format: ``base64-token rank`` per line, by rank."""
    return b"".join(
        base64.b64encode(token) + b" " + str(rank).encode() + b"\n"
        for token, rank in sorted(mergeable_ranks.items(), key=lambda kv: kv[1])
    )


def ranks_sha256(mergeable_ranks: dict[bytes, int]) -> str:
    """sha256 of the ranks written in tiktoken's format (``ranks_file_bytes``).

    For a canonical ranks file this is the sha256 of the file itself."""
    return hashlib.sha256(ranks_file_bytes(mergeable_ranks)).hexdigest()


def content_sha256(mergeable_ranks: dict[bytes, int], pattern: str, special_tokens: list[str]) -> str:
    """The identity hash of a tokenizer: its ranks, split pattern and special tokens (in id
    order). With GPT-2's pattern and only end-of-text it is ``ranks_sha256``, so a trained
    tokenizer and a bare ranks file with the same ranks are the same tokenizer."""
    if pattern == GPT2_PATTERN and special_tokens == [ENDOFTEXT]:
        return ranks_sha256(mergeable_ranks)
    digest = hashlib.sha256(ranks_file_bytes(mergeable_ranks))
    digest.update(json.dumps({"pattern": pattern, "special_tokens": special_tokens}).encode())
    return digest.hexdigest()


class Tokenizer:
    """A ``tiktoken.Encoding`` with an end-of-text token and an identity.

    ``vocab_size = eot_token + 1``: the end-of-text token is the last id
    (50256 for GPT-2, 256 for bytes); a trained tokenizer's other special tokens
    come right before it.
    """

    def __init__(self, encoding: tiktoken.Encoding, name: str, source: str = "") -> None:
        self.encoding = encoding
        self.name = name
        self.source = source  # where the ranks came from, for messages
        self.eot_token: int = encoding.eot_token
        self.vocab_size: int = self.eot_token + 1
        self._sha256: str | None = None

    @property
    def identity(self) -> dict[str, str]:
        if self._sha256 is None:
            self._sha256 = ranks_sha256(self.encoding._mergeable_ranks)
        return {"name": self.name, "sha256": self._sha256}

    @property
    def special_tokens(self) -> list[str]:
        """The special tokens in id order (end-of-text last)."""
        specials = self.encoding._special_tokens
        return sorted(specials, key=specials.get)

    @property
    def pattern(self) -> str:
        return self.encoding._pat_str

    def encode(self, text: str) -> list[int]:
        """Token ids of ordinary text; ``<|endoftext|>`` in the text is encoded as text."""
        return self.encoding.encode_ordinary(text)

    def encode_array(self, text: str) -> np.ndarray:
        """Like ``encode`` but returns a uint32 array without building a Python list
        (the data pipeline's fast path; tiktoken releases the GIL while encoding)."""
        core = getattr(self.encoding, "_core_bpe", None)
        if core is not None and hasattr(core, "encode_to_tiktoken_buffer"):
            return np.frombuffer(core.encode_to_tiktoken_buffer(text, set()), dtype=np.uint32)
        return np.asarray(self.encoding.encode_ordinary(text), dtype=np.uint32)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of ``ids``; use it when streaming so a UTF-8 character split
        across tokens is not replaced."""
        return self.encoding.decode_bytes(_as_int_list(ids))

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"Tokenizer(name={self.name!r}, vocab_size={self.vocab_size}, source={self.source!r})"


def _as_int_list(ids: Any) -> list[int]:
    if hasattr(ids, "tolist"):  # numpy arrays, torch tensors
        ids = ids.tolist()
    return [int(i) for i in ids]


# --------------------------------------------------------------------------- construction


def _encoding(
    name: str, pattern: str, ranks: dict[bytes, int], special_tokens: list[str] | None = None
) -> tiktoken.Encoding:
    """The special tokens get the ids after the ranks, in order; end-of-text is the last."""
    n = len(ranks)
    if sorted(ranks.values()) != list(range(n)):
        raise DataError(f"tokenizer '{name}': ranks are not 0..{n - 1}", "check the ranks file")
    specials = special_tokens or [ENDOFTEXT]
    if specials[-1] != ENDOFTEXT or len(set(specials)) != len(specials):
        raise DataError(
            f"tokenizer '{name}': special tokens {specials} must be distinct and end with {ENDOFTEXT}",
            "check the tokenizer's .json file",
        )
    ids = {token: n + i for i, token in enumerate(specials)}
    return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=ids)


_BYTES: Tokenizer | None = None


def bytes_tokenizer() -> Tokenizer:
    """One token per UTF-8 byte (ids 0..255) and end-of-text = 256 (vocab 257)."""
    global _BYTES
    if _BYTES is None:
        ranks = {bytes([i]): i for i in range(256)}
        _BYTES = Tokenizer(_encoding("bytes", BYTES_PATTERN, ranks), "bytes", source="built in")
    return _BYTES


_FILE_CACHE: dict[tuple[str, str, int, int, int], Tokenizer] = {}


def read_tokenizer_meta(path: Path) -> dict[str, Any]:
    """A trained tokenizer's ``NAME.json`` (see ``lmforge.data.tokenizer_train``); a one-line
    error when it is damaged."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not isinstance(meta.get("pattern"), str):
            raise ValueError("no 'pattern'")
        if not all(isinstance(t, str) for t in meta.get("special_tokens", [ENDOFTEXT])):
            raise ValueError("'special_tokens' is not a list of strings")
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path} is damaged ({exc})", "train the tokenizer again with lmforge tokenizer train"
        ) from None
    return meta


def _pattern_and_specials(meta_path: Path) -> tuple[str, list[str]]:
    """GPT-2's pattern and end-of-text for a bare ranks file, else what its NAME.json says."""
    if not meta_path.is_file():
        return GPT2_PATTERN, [ENDOFTEXT]
    meta = read_tokenizer_meta(meta_path)
    pattern = SPLIT_PATTERNS.get(meta["pattern"], meta["pattern"])
    return pattern, list(meta.get("special_tokens", [ENDOFTEXT]))


def tokenizer_from_ranks_file(path: str | os.PathLike, name: str | None = None) -> Tokenizer:
    """A tokenizer from a tiktoken ranks file (``base64-token rank`` per line) with
    GPT-2's split pattern; end-of-text is the id after the last rank."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"tokenizer file not found: {path}", "pass an existing .tiktoken ranks file")
    name = name or path.stem
    stat = path.stat()
    meta_path = path.with_suffix(META_SUFFIX)
    meta_stat = meta_path.stat().st_mtime_ns if meta_path.is_file() else 0
    key = (str(path.resolve()), name, stat.st_size, stat.st_mtime_ns, meta_stat)
    if key not in _FILE_CACHE:
        from tiktoken.load import load_tiktoken_bpe

        try:
            ranks = load_tiktoken_bpe(str(path))
        except Exception as exc:  # binascii.Error, ValueError, UnicodeDecodeError
            raise DataError(
                f"{path} is not a tiktoken ranks file ({type(exc).__name__}: {exc})",
                "expected lines of '<base64 token> <rank>', like gpt2.tiktoken",
            ) from None
        if not ranks:
            raise DataError(f"{path} holds no ranks", "expected lines of '<base64 token> <rank>'")
        pattern, specials = _pattern_and_specials(meta_path)
        tok = Tokenizer(_encoding(name, pattern, ranks, specials), name, source=str(path))
        if meta_stat:
            tok._sha256 = content_sha256(ranks, pattern, specials)
        elif hashlib.sha256(path.read_bytes()).hexdigest() == GPT2_RANKS_SHA256:
            tok._sha256 = GPT2_RANKS_SHA256  # GPT-2's canonical file: no need to re-serialize its ranks
        _FILE_CACHE[key] = tok
    return _FILE_CACHE[key]


def _gpt2_file_candidates(tokenizer_file, workspace: Workspace | None) -> list[tuple[Path, str]]:
    candidates = []
    if tokenizer_file:
        candidates.append((Path(tokenizer_file).expanduser(), "--tokenizer-file"))
    if os.environ.get(ENV_TOKENIZER_FILE):
        candidates.append((Path(os.environ[ENV_TOKENIZER_FILE]).expanduser(), ENV_TOKENIZER_FILE))
    if workspace is not None:
        candidates.append((workspace_ranks_file(workspace, "gpt2"), "workspace"))
    return candidates


def _tiktoken_cache_dir() -> str:
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return os.environ[var]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _gpt2_in_tiktoken_cache() -> bool:
    cache = _tiktoken_cache_dir()
    if not cache:
        return False
    return all(
        os.path.exists(os.path.join(cache, hashlib.sha1(url.encode()).hexdigest())) for url in _GPT2_URLS
    )


def _missing_gpt2_hint(workspace: Workspace | None) -> str:
    where = str(workspace_ranks_file(workspace, "gpt2")) if workspace is not None else None
    places = f"put gpt2.tiktoken at {where}, " if where else ""
    return (
        f"{places}pass --tokenizer-file PATH or set {ENV_TOKENIZER_FILE}=PATH "
        "(GPT-2's ranks in tiktoken format)"
    )


def _get_encoding_with_timeout(name: str, timeout: float) -> tiktoken.Encoding:
    """``tiktoken.get_encoding`` in a daemon thread, so a dead network cannot hang us."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["encoding"] = tiktoken.get_encoding(name)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name="tiktoken-download")
    thread.start()
    thread.join(timeout)
    if "encoding" in result:
        return result["encoding"]
    raise TimeoutError(f"no answer within {timeout:.0f} s") if thread.is_alive() else result["error"]


_GPT2_DOWNLOADED: Tokenizer | None = None


def _download_failure(exc: BaseException) -> str:
    """Why tiktoken's download failed in whole words, not a cut page of urllib3 internals."""
    host = re.search(r"host='([^']+)'", str(exc))
    if host or (isinstance(exc, OSError) and not isinstance(exc, TimeoutError)):
        return f"no connection to {host.group(1) if host else 'the download server'}"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0]}" if str(exc) else type(exc).__name__


def _gpt2(tokenizer_file, workspace: Workspace | None) -> Tokenizer:
    global _GPT2_DOWNLOADED
    for path, origin in _gpt2_file_candidates(tokenizer_file, workspace):
        if path.is_file():
            tok = tokenizer_from_ranks_file(path, name="gpt2")
            _check_gpt2_ranks(tok, path)
            return tok
        if origin != "workspace":  # an explicit file that does not exist is a mistake
            raise UsageError(
                f"tokenizer file not found: {path} (from {origin})", _missing_gpt2_hint(workspace)
            )
    if _GPT2_DOWNLOADED is not None:
        return _GPT2_DOWNLOADED
    try:
        encoding = _get_encoding_with_timeout("gpt2", DOWNLOAD_TIMEOUT_S)
    except Exception as exc:
        raise DataError(
            "GPT-2's tokenizer files are not available offline and could not be downloaded "
            f"({_download_failure(exc)})",
            _missing_gpt2_hint(workspace),
        ) from None
    _GPT2_DOWNLOADED = Tokenizer(encoding, "gpt2", source="tiktoken")
    return _GPT2_DOWNLOADED


def gpt2_if_available(workspace: Workspace | None) -> Tokenizer | None:
    """GPT-2's tokenizer when its ranks are here (a file or tiktoken's cache), else None;
    never downloads (for comparisons that are a bonus, like ``tokenizer show``'s)."""
    found = _GPT2_DOWNLOADED is not None or _gpt2_in_tiktoken_cache()
    found = found or any(path.is_file() for path, _ in _gpt2_file_candidates(None, workspace))
    if not found:
        return None
    try:
        return _gpt2(None, workspace)
    except (LmforgeError, OSError):
        return None


def _check_gpt2_ranks(tok: Tokenizer, path: Path) -> None:
    n = tok.eot_token
    if n != GPT2_NUM_RANKS or tok.identity["sha256"] != GPT2_RANKS_SHA256:
        raise UsageError(
            f"{path} is not GPT-2's ranks file ({n} ranks, sha256 {tok.identity['sha256'][:12]}…; "
            f"expected {GPT2_NUM_RANKS} ranks, sha256 {GPT2_RANKS_SHA256[:12]}…)",
            "use gpt2.tiktoken (e.g. from the openai-whisper package), or load other ranks by name: "
            "put NAME.tiktoken in the workspace's tokenizers/ and pass --tokenizer NAME",
        )


def get_tokenizer(
    name: str = "gpt2",
    tokenizer_file: str | os.PathLike | None = None,
    workspace: Workspace | None = None,
) -> Tokenizer:
    """The tokenizer called ``name``: ``gpt2``, ``bytes``, or NAME for a ranks file
    ``tokenizers/NAME.tiktoken`` in the workspace (or given with ``tokenizer_file``)."""
    if name == "gpt2":
        return _gpt2(tokenizer_file, workspace)
    if name == "bytes":
        return bytes_tokenizer()
    if tokenizer_file:
        return tokenizer_from_ranks_file(tokenizer_file, name=name)
    if workspace is not None and workspace_ranks_file(workspace, name).is_file():
        return tokenizer_from_ranks_file(workspace_ranks_file(workspace, name), name=name)
    known = list(TOKENIZER_NAMES) + workspace_tokenizer_names(workspace)
    raise UsageError(
        f"unknown tokenizer '{name}' (known: {', '.join(dict.fromkeys(known))})",
        f"train it with lmforge tokenizer train {name} SOURCE, pick one of those, "
        "or put NAME.tiktoken in the workspace's tokenizers/",
    )


def workspace_ranks_file(workspace: Workspace, name: str) -> Path:
    """Where the workspace keeps the ranks of the tokenizer ``name``: ``tokenizers/NAME.tiktoken``."""
    return workspace.tokenizers_dir / f"{name}{RANKS_SUFFIX}"


def write_workspace_tokenizer(
    workspace: Workspace,
    name: str,
    ranks: dict[bytes, int],
    pattern: str,
    special_tokens: list[str],
    meta: dict[str, Any] | None = None,
) -> Path:
    """Save a tokenizer as ``tokenizers/NAME.tiktoken`` + ``NAME.json`` (pattern, special
    tokens, content hash, and ``meta``); returns the ranks file."""
    from lmforge.fileio import write_bytes_atomic, write_json_atomic

    pattern_name = next((k for k, v in SPLIT_PATTERNS.items() if v == pattern), pattern)
    description = {
        "name": name,
        "pattern": pattern_name,
        "special_tokens": special_tokens,
        "vocab_size": len(ranks) + len(special_tokens),
        "sha256": content_sha256(ranks, pattern, special_tokens),
        **(meta or {}),
    }
    workspace.ensure(workspace.tokenizers_dir)
    path = workspace_ranks_file(workspace, name)
    # The description first: a ranks file without one would load with GPT-2's pattern.
    write_json_atomic(path.with_suffix(META_SUFFIX), description)
    write_bytes_atomic(path, ranks_file_bytes(ranks))
    return path


def remember_tokenizer_file(workspace: Workspace, tok: Tokenizer, path: str | os.PathLike) -> Path | None:
    """Copy a ranks file given on the command line into the workspace's ``tokenizers/``,
    so that train, eval and generate find it later without the flag. Returns the copy,
    or None when the workspace already had one (never overwritten)."""
    if tok.name == "bytes":
        return None
    target = workspace_ranks_file(workspace, tok.name)
    if target.exists() or Path(path).resolve() == target.resolve():
        return None
    workspace.ensure(workspace.tokenizers_dir)
    if Path(path).with_suffix(META_SUFFIX).is_file():  # a trained tokenizer's pattern and specials
        copy_file_atomic(Path(path).with_suffix(META_SUFFIX), target.with_suffix(META_SUFFIX))
    copy_file_atomic(Path(path), target)  # a concurrent reader sees no file or the whole file
    return target


def workspace_tokenizer_names(workspace: Workspace | None) -> list[str]:
    """The tokenizers the workspace holds (``tokenizers/NAME.tiktoken``), sorted."""
    if workspace is None or not workspace.tokenizers_dir.is_dir():
        return []
    return sorted(p.stem for p in workspace.tokenizers_dir.glob(f"*{RANKS_SUFFIX}"))


def tokenizer_from_identity(
    identity: dict, workspace: Workspace | None = None, tokenizer_file: str | os.PathLike | None = None
) -> Tokenizer:
    """The tokenizer a dataset or checkpoint was made with; an error when the ranks found
    here differ from the ones it was made with."""
    name = identity.get("name")
    if not name:
        raise DataError(
            f"no tokenizer name in {identity!r}", "the metadata is damaged; prepare the data again"
        )
    tok = get_tokenizer(name, tokenizer_file=tokenizer_file, workspace=workspace)
    if identity.get("sha256") and tok.identity["sha256"] != identity["sha256"]:
        raise DataError(
            f"tokenizer '{name}' from {tok.source} has sha256 {tok.identity['sha256'][:12]}…, "
            f"but the data or checkpoint was made with sha256 {identity['sha256'][:12]}…",
            "point --tokenizer-file at the ranks file it was made with"
            if tok.name not in _trained_names(workspace)
            else f"'{name}' was trained again since: prepare the data again, or restore its old files",
        )
    return tok


def _trained_names(workspace: Workspace | None) -> set[str]:
    return {
        n
        for n in workspace_tokenizer_names(workspace)
        if workspace_ranks_file(workspace, n).with_suffix(META_SUFFIX).is_file()
    }


def tokenizer_status(workspace: Workspace | None) -> dict[str, str]:
    """What ``lmforge info`` shows per tokenizer; never downloads and reads no ranks."""
    status: dict[str, str] = {}
    gpt2 = None
    for path, origin in _gpt2_file_candidates(None, workspace):
        if path.is_file():
            gpt2 = f"ok ({path})"
            break
        if origin != "workspace":
            gpt2 = f"missing: {origin} points at {path}, which does not exist"
            break
    if gpt2 is None:
        if _gpt2_in_tiktoken_cache():
            gpt2 = f"ok (tiktoken cache {_tiktoken_cache_dir()})"
        else:
            gpt2 = f"not cached: tiktoken downloads it when online; offline, {_missing_gpt2_hint(workspace)}"
    status["gpt2"] = gpt2
    status["bytes"] = "ok (built in)"
    for name in workspace_tokenizer_names(workspace):
        if name not in status:
            status[name] = f"ok ({workspace_ranks_file(workspace, name)})"
    return status
