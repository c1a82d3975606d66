"""TOML files: a config file read with one-line errors that name the file, and a nested dict of
scalars written back as TOML with ``tomli_w`` (what ``config.toml`` and ``--dry-run`` print)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from lmforge.errors import ConfigError


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist", "check the --config path") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory", "pass the path of a .toml file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # a binary file, or text in another encoding
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {exc.start})", "a TOML file must be UTF-8 text"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None


def dumps_toml(data: dict[str, Any]) -> str:
    """Write a nested dict of scalars as TOML (top-level scalars first, then tables), with
    ``tomli_w``.

    ``None`` has no TOML spelling; such keys are omitted and read back as their default.
    """
    import tomli_w

    return tomli_w.dumps(_without_none(data))


def _without_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in data.items() if v is not None}
