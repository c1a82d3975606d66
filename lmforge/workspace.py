"""The per-user workspace: where datasets, runs and tokenizer files live.

Precedence: an explicit path (``--workspace``) > ``LMFORGE_HOME`` >
``platformdirs.user_data_path("lmforge")``. Directories are created lazily,
the first time something is written, so ``--help`` and read-only commands
leave no trace on disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

ENV_VAR = "LMFORGE_HOME"


def default_workspace_path() -> Path:
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return platformdirs.user_data_path("lmforge", appauthor=False)


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, path: str | os.PathLike | None = None) -> Workspace:
        root = Path(path).expanduser() if path else default_workspace_path()
        return cls(root.resolve())

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def tokenizers_dir(self) -> Path:
        return self.root / "tokenizers"

    def dataset_dir(self, name: str) -> Path:
        return self.datasets_dir / name

    def run_dir(self, name: str) -> Path:
        return self.runs_dir / name

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
