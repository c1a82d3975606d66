"""Tokenizers: bytes, ranks files, GPT-2's lookup order, identities, offline errors."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import tiktoken
from data_fixtures import write_ranks_file

from lmforge.data import tokenizer as tokmod
from lmforge.data.tokenizer import (
    bytes_tokenizer,
    get_tokenizer,
    tokenizer_from_identity,
    tokenizer_from_ranks_file,
    tokenizer_status,
)
from lmforge.errors import DataError, UsageError
from lmforge.workspace import Workspace

TEXT = "The theatre thinks: naïve € 😀 <|endoftext|> the end\n\n  x"


def test_bytes_tokenizer_round_trip():
    tok = bytes_tokenizer()
    assert (tok.name, tok.eot_token, tok.vocab_size) == ("bytes", 256, 257)
    ids = tok.encode(TEXT)
    assert ids == list(TEXT.encode("utf-8"))  # special tokens in text are plain text
    assert tok.decode(ids) == TEXT
    assert tok.decode_bytes(np.array(ids, dtype=np.uint16)) == TEXT.encode()
    assert tok.encode_array(TEXT).tolist() == ids
    assert tok.identity == bytes_tokenizer().identity


def test_decode_replaces_split_characters():
    tok = bytes_tokenizer()
    ids = tok.encode("€")
    assert tok.decode(ids[:2]) == "\ufffd"
    assert tok.decode_bytes(ids[:2]) + tok.decode_bytes(ids[2:]) == "€".encode()


def test_ranks_file_tokenizer(ranks_file):
    tok = tokenizer_from_ranks_file(ranks_file)
    assert tok.name == "small" and tok.eot_token == 262 and tok.vocab_size == 263
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert len(ids) < len(TEXT.encode())  # the merges are used
    assert tok.encode(" the") == [260]
    assert tok.encode_array(TEXT).tolist() == ids
    # the identity is the sha256 of the ranks in tiktoken's format: here, of the file itself
    import hashlib

    assert tok.identity == {"name": "small", "sha256": hashlib.sha256(ranks_file.read_bytes()).hexdigest()}


def test_gpt2_pattern_matches_tiktoken():
    """Our GPT-2 pattern is tiktoken's: the same split into pieces on tricky text."""
    ranks = {bytes([i]): i for i in range(256)}
    ours = tiktoken.Encoding("x", pat_str=tokmod.GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
    from tiktoken_ext.openai_public import r50k_pat_str

    assert tokmod.GPT2_PATTERN == r50k_pat_str
    assert ours.decode(ours.encode_ordinary(TEXT)) == TEXT


def test_identity_distinguishes_ranks(tmp_path):
    a = tokenizer_from_ranks_file(write_ranks_file(tmp_path / "a.tiktoken"), name="x")
    b = tokenizer_from_ranks_file(write_ranks_file(tmp_path / "b.tiktoken", merges=(b"ab",)), name="x")
    assert a.identity != b.identity and a.identity["name"] == b.identity["name"]


def test_ranks_file_bytes_is_the_tiktoken_format(tmp_path):
    ranks = {bytes([i]): i for i in range(256)} | {b"ab": 256, b"abc": 257}
    path = tmp_path / "x.tiktoken"
    path.write_bytes(tokmod.ranks_file_bytes(ranks))
    tok = tokenizer_from_ranks_file(path)
    assert tok.encoding._mergeable_ranks == ranks
    assert tok.identity["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_remember_tokenizer_file_copies_once(data_ws, ranks_file):
    tok = tokenizer_from_ranks_file(ranks_file, name="mine")
    copy = tokmod.remember_tokenizer_file(data_ws, tok, ranks_file)
    assert copy == tokmod.workspace_ranks_file(data_ws, "mine")
    assert copy.read_bytes() == ranks_file.read_bytes()
    assert [p.name for p in data_ws.tokenizers_dir.iterdir()] == ["mine.tiktoken"]
    assert tokmod.remember_tokenizer_file(data_ws, tok, ranks_file) is None  # never overwritten


def test_bad_ranks_file(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("not base64!! x\n")
    with pytest.raises(DataError, match="not a tiktoken ranks file"):
        tokenizer_from_ranks_file(bad)
    with pytest.raises(UsageError, match="not found"):
        tokenizer_from_ranks_file(tmp_path / "missing.tiktoken")


def test_unknown_tokenizer_name(data_ws):
    with pytest.raises(UsageError, match="unknown tokenizer 'nope'.*gpt2, bytes") as exc:
        get_tokenizer("nope", workspace=data_ws)
    assert exc.value.exit_code == 2


def test_named_ranks_file_in_workspace(data_ws):
    data_ws.ensure(data_ws.tokenizers_dir)
    write_ranks_file(data_ws.tokenizers_dir / "mybpe.tiktoken")
    tok = get_tokenizer("mybpe", workspace=data_ws)
    assert tok.name == "mybpe"
    assert tokenizer_from_identity(tok.identity, workspace=data_ws).identity == tok.identity
    assert tokenizer_status(data_ws)["mybpe"].startswith("ok")


def test_gpt2_offline_without_file_is_a_clear_error(data_ws, monkeypatch):
    def offline(name):
        # what requests says offline: one line of urllib3 internals, which the message must not cut
        raise ConnectionError(
            "HTTPSConnectionPool(host='openaipublic.blob.core.windows.net', port=443): Max retries "
            "exceeded with url: /gpt-2/encodings/main/vocab.bpe (Caused by NameResolutionError(...))"
        )

    monkeypatch.setattr(tokmod.tiktoken, "get_encoding", offline)
    monkeypatch.setattr(tokmod, "_GPT2_DOWNLOADED", None)
    with pytest.raises(DataError) as exc:
        get_tokenizer("gpt2", workspace=data_ws)
    assert "could not be downloaded" in exc.value.message
    assert exc.value.message.endswith("(no connection to openaipublic.blob.core.windows.net)")
    assert str(data_ws.tokenizers_dir / "gpt2.tiktoken") in exc.value.hint
    assert "--tokenizer-file" in exc.value.hint and "LMFORGE_TOKENIZER_FILE" in exc.value.hint


def test_gpt2_download_does_not_hang(data_ws, monkeypatch):
    import threading

    never = threading.Event()
    monkeypatch.setattr(tokmod.tiktoken, "get_encoding", lambda name: never.wait(30))
    monkeypatch.setattr(tokmod, "_GPT2_DOWNLOADED", None)
    monkeypatch.setattr(tokmod, "DOWNLOAD_TIMEOUT_S", 0.2)
    with pytest.raises(DataError, match="TimeoutError"):
        get_tokenizer("gpt2", workspace=data_ws)
    never.set()


def test_gpt2_file_that_is_not_gpt2_is_refused(ranks_file, monkeypatch):
    with pytest.raises(UsageError, match="is not GPT-2's ranks file"):
        get_tokenizer("gpt2", tokenizer_file=ranks_file)
    monkeypatch.setenv(tokmod.ENV_TOKENIZER_FILE, str(ranks_file.parent / "nope.tiktoken"))
    with pytest.raises(UsageError, match="LMFORGE_TOKENIZER_FILE"):
        get_tokenizer("gpt2")


def test_gpt2_lookup_prefers_local_file(data_ws, monkeypatch):
    """With a (fake) GPT-2 file in the workspace, tiktoken's download is never tried."""
    fake = bytes_tokenizer()
    calls = []
    monkeypatch.setattr(tokmod.tiktoken, "get_encoding", lambda name: calls.append(name))
    monkeypatch.setattr(tokmod, "tokenizer_from_ranks_file", lambda path, name=None: fake)
    monkeypatch.setattr(tokmod, "_check_gpt2_ranks", lambda tok, path: None)
    data_ws.ensure(data_ws.tokenizers_dir)
    (data_ws.tokenizers_dir / "gpt2.tiktoken").write_text("x")
    assert get_tokenizer("gpt2", workspace=data_ws) is fake
    assert calls == []


def test_tokenizer_status_is_offline_and_fast(data_ws, monkeypatch, tmp_path):
    monkeypatch.setattr(tokmod.tiktoken, "get_encoding", lambda name: pytest.fail("must not download"))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    status = tokenizer_status(data_ws)
    assert status["bytes"] == "ok (built in)"
    assert "gpt2.tiktoken" in status["gpt2"] and status["gpt2"].startswith("not cached")
    data_ws.ensure(data_ws.tokenizers_dir)
    (data_ws.tokenizers_dir / "gpt2.tiktoken").write_text("x")
    assert tokenizer_status(data_ws)["gpt2"].startswith("ok (")


def test_tokenizer_from_identity_checks_the_hash(data_ws, tmp_path):
    assert tokenizer_from_identity(bytes_tokenizer().identity) is bytes_tokenizer()
    with pytest.raises(DataError, match="sha256"):
        tokenizer_from_identity({"name": "bytes", "sha256": "0" * 64})
    small = write_ranks_file(tmp_path / "small.tiktoken")
    tok = tokenizer_from_ranks_file(small)
    assert tokenizer_from_identity(tok.identity, tokenizer_file=small).identity == tok.identity


# GPT-2's real ranks file is not generated (1.6 MB, from the openai-whisper package): the test
# that reads it looks where this variable says, else beside the clone in ../shared.
GPT2_TIKTOKEN_ENV = "LMFORGE_TEST_GPT2_TIKTOKEN"


def real_gpt2_file() -> Path:
    """The real gpt2.tiktoken, or a skip that names the variable to set. A path set in the
    variable that is not a file fails instead: a typo there must not pass as a skip."""
    given = os.environ.get(GPT2_TIKTOKEN_ENV)
    if given:
        if not Path(given).is_file():
            pytest.fail(f"{GPT2_TIKTOKEN_ENV}={given} is not a file")
        return Path(given)
    default = Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "gpt2.tiktoken"
    if not default.is_file():
        pytest.skip(f"needs GPT-2's gpt2.tiktoken: set {GPT2_TIKTOKEN_ENV}=PATH (not found at {default})")
    return default


def test_real_gpt2_file_lookup(tmp_path, monkeypatch):
    monkeypatch.setenv(GPT2_TIKTOKEN_ENV, str(tmp_path / "missing.tiktoken"))
    with pytest.raises(pytest.fail.Exception, match=f"{GPT2_TIKTOKEN_ENV}=.*missing.tiktoken is not a file"):
        real_gpt2_file()
    (tmp_path / "gpt2.tiktoken").write_text("x")
    monkeypatch.setenv(GPT2_TIKTOKEN_ENV, str(tmp_path / "gpt2.tiktoken"))
    assert real_gpt2_file() == tmp_path / "gpt2.tiktoken"
    monkeypatch.delenv(GPT2_TIKTOKEN_ENV)
    monkeypatch.setattr("pathlib.Path.is_file", lambda self: False)  # a clone that is not beside ../shared
    with pytest.raises(pytest.skip.Exception, match=f"set {GPT2_TIKTOKEN_ENV}=PATH"):
        real_gpt2_file()


def test_real_gpt2_file():
    path = real_gpt2_file()
    tok = get_tokenizer("gpt2", tokenizer_file=path, workspace=Workspace.resolve(path.parent))
    assert tok.encode("Hello world") == [15496, 995]
    assert (tok.eot_token, tok.vocab_size) == (50256, 50257)
    assert tok.identity == {"name": "gpt2", "sha256": tokmod.GPT2_RANKS_SHA256}
