"""TOML files: a config file read with one-line errors that name the file, and a nested dict of
scalars written back as TOML (what ``config.toml`` and ``--dry-run`` print)."""

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
    """Write a nested dict of scalars as TOML (top-level scalars first, then tables).

    ``None`` has no TOML spelling; such keys are omitted and read back as their default.
    """
    lines: list[str] = []
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    for key, value in data.items():
        if not isinstance(value, dict) and value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables.items():
        lines.append("")
        lines.append(f"[{name}]")
        for key, value in table.items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    raise TypeError(f"cannot write {value!r} as TOML")
