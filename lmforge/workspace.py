"""The per-user workspace: where datasets, runs and tokenizer files live.

Precedence: an explicit path (``--workspace``) > ``LMFORGE_HOME`` >
``platformdirs.user_data_path("lmforge")``. Directories are created lazily,
the first time something is written, so ``--help`` and read-only commands
leave no trace on disk. A root that is (or lies under) a file is refused when
the workspace is resolved, so every command says so in one line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from lmforge.errors import UsageError

ENV_VAR = "LMFORGE_HOME"

# Names of runs, datasets and imported checkpoints: one path component, no hidden files, no "..".
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_NAME_LENGTH = 200


def is_valid_name(name: str) -> bool:
    """Whether ``name`` may name a run, a dataset or an imported checkpoint in the workspace."""
    return bool(NAME_PATTERN.match(name)) and len(name) <= MAX_NAME_LENGTH


def default_workspace_path() -> Path:
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return platformdirs.user_data_path("lmforge", appauthor=False)


def _check_root(root: Path, origin: str) -> None:
    """Refuse a workspace root that is a file, or whose nearest existing ancestor is one
    (nothing could ever be created there: every command would fail with a traceback)."""
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        where = "is a file" if probe == root else f"lies under the file {probe}"
        raise UsageError(
            f"the workspace {root} ({origin}) {where}, not a directory",
            f"point {'--workspace' if origin == '--workspace' else ENV_VAR} at a directory "
            "(it is created if missing)",
        )


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, path: str | os.PathLike | None = None) -> Workspace:
        """The workspace at ``path``, else ``LMFORGE_HOME``'s, else the default; a
        ``UsageError`` when that path is, or lies under, something other than a directory."""
        root = Path(path).expanduser() if path else default_workspace_path()
        env = os.environ.get(ENV_VAR)
        # the CLI's --workspace option reads LMFORGE_HOME too: name the one the user set
        origin = "--workspace" if path and str(path) != env else ENV_VAR if env else "the default workspace"
        root = root.resolve()
        _check_root(root, origin)
        return cls(root)

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def tokenizers_dir(self) -> Path:
        return self.root / "tokenizers"

    @property
    def cache_dir(self) -> Path:
        """Measurements worth keeping between commands (e.g. whether bf16 pays on this CPU)."""
        return self.root / "cache"

    def dataset_dir(self, name: str) -> Path:
        return self.datasets_dir / name

    def run_dir(self, name: str) -> Path:
        return self.runs_dir / name

    def run(self, name: str) -> RunDir:
        return RunDir(self.runs_dir / name)

    def ensure(self, path: Path) -> Path:
        """Create ``path`` (a directory inside the workspace) and return it."""
        path.mkdir(parents=True, exist_ok=True)
        return path

    def contains(self, path: Path) -> bool:
        """True when ``path`` lies inside the workspace (symlinks resolved)."""
        try:
            Path(path).resolve().relative_to(self.root)
        except ValueError:
            return False
        return True

    def dataset_names(self) -> list[str]:
        if not self.datasets_dir.is_dir():
            return []
        return sorted(p.name for p in self.datasets_dir.iterdir() if (p / "meta.json").is_file())

    def run_names(self) -> list[str]:
        if not self.runs_dir.is_dir():
            return []
        return sorted(p.name for p in self.runs_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass(frozen=True)
class RunDir:
    """Every path inside a run directory ``runs/<name>/``; no other module spells these names.

    ``config.toml``   the resolved config (written at each start)
    ``run.json``      status, step, tokens, best validation loss, pid, host
    ``metrics.jsonl`` one JSON object per logged step, evaluation, bad step or rollback
    ``samples.jsonl`` the text samples made at evaluations
    ``checkpoints/``  one directory per checkpoint (``best``, ``step-N``)
    ``plots/``        loss-curve PNGs
    ``wandb/``        the W&B run's local files
    """

    path: Path

    CONFIG_FILE = "config.toml"
    RUN_FILE = "run.json"
    METRICS_FILE = "metrics.jsonl"
    SAMPLES_FILE = "samples.jsonl"
    LOCK_FILE = ".lock"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG_FILE

    @property
    def run_file(self) -> Path:
        return self.path / self.RUN_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / self.METRICS_FILE

    @property
    def samples_file(self) -> Path:
        return self.path / self.SAMPLES_FILE

    @property
    def lock_file(self) -> Path:
        return self.path / self.LOCK_FILE

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, name: str) -> Path:
        return self.checkpoints_dir / name

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"
