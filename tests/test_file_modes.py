"""Files lmforge writes get the user's umask, like any other file: a temporary file's
or directory's private mode (mkdtemp's 0700, safetensors' 0600) never survives the
rename into place, so on a shared machine others can read an export when the umask says so."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from data_fixtures import write_wikitext

from lmforge.fileio import apply_umask, current_umask, staged_dir, write_bytes_atomic, write_json_atomic


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    """Every path under ``root`` (and ``root`` itself) -> its permission bits."""
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    return {str(p.relative_to(root.parent)): stat.S_IMODE(p.stat().st_mode) for p in paths}


def _assert_umask_modes(root: Path, mask: int) -> None:
    modes = _modes(root)
    assert modes, root
    for name, mode in modes.items():
        expected = (0o777 if (root.parent / name).is_dir() else 0o666) & ~mask
        assert mode == expected, (name, oct(mode), oct(expected))


def test_current_umask_reads_without_changing(umask):
    assert current_umask() == umask
    assert os.umask(umask) == umask  # still what the fixture set


def test_atomic_writers_and_staged_dir(tmp_path, umask):
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    write_bytes_atomic(tmp_path / "b.bin", b"x")
    with staged_dir(tmp_path / "staged", replace=False) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "f").write_text("x")
        os.chmod(tmp / "sub" / "f", 0o600)  # as safetensors leaves its files
    for name in ("a.json", "b.bin", "staged"):
        _assert_umask_modes(tmp_path / name, umask)


def test_apply_umask_on_one_file(tmp_path, umask):
    f = tmp_path / "f"
    f.write_text("x")
    os.chmod(f, 0o600)
    apply_umask(f)
    assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask


def test_checkpoints_and_exports_follow_the_umask(cli, make_ckpt_run, tmp_path, umask):
    run = make_ckpt_run("r", [(10, "full"), (10, "best")])
    for ckpt in ("step-10", "best"):
        _assert_umask_modes(run / "checkpoints" / ckpt, umask)
    for fmt in ("hf", "safetensors"):
        out = tmp_path / f"export-{fmt}"
        result = cli("ckpt", "export", "r:best", "--format", fmt, "--out", str(out))
        assert result.exit_code == 0, result.stderr
        assert (out / ("model.safetensors")).is_file()
        _assert_umask_modes(out, umask)


def test_prepared_dataset_follows_the_umask(cli, tmp_path, workspace_dir, umask):
    write_wikitext(tmp_path / "src")
    result = cli("data", "prepare", "wikitext-2", "--source", str(tmp_path / "src"), "--tokenizer", "bytes")
    assert result.exit_code == 0, result.stderr
    _assert_umask_modes(workspace_dir / "datasets" / "wikitext-2", umask)
