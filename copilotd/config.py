"""The daemon's config file: TOML, one table per concern.

``$XDG_CONFIG_HOME/copilotd/config.toml`` (default ``~/.config/copilotd``),
or ``--config PATH``. A missing default file means "all defaults"; a missing
file named explicitly is an error. Each concern reads and validates its own
table (``providers``, ``models``, ``retention``, …) through ``section``, so
that modules own their settings and errors name the table and key at fault.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_ENV = "COPILOTD_CONFIG"


class ConfigError(Exception):
    """The config file is unreadable or a setting is invalid; the message says where."""


def default_config_path() -> Path:
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home).expanduser() / "copilotd" / "config.toml"


@dataclass(frozen=True)
class ConfigFile:
    """The parsed file; ``path`` is None when no file was read."""

    path: Path | None = None
    tables: dict[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        """The table ``[name]`` (empty when absent)."""
        value = self.tables.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.where()}: [{name}] must be a table")
        return value

    def where(self) -> str:
        return str(self.path) if self.path else "config"


def load_config(explicit: Path | None = None) -> ConfigFile:
    """Read ``explicit``, else ``$COPILOTD_CONFIG``, else the default path if it exists."""
    named = explicit or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    path = named or default_config_path()
    if not path.exists():
        if named is not None:
            raise ConfigError(f"config file {path} does not exist")
        return ConfigFile()
    try:
        with path.open("rb") as handle:
            return ConfigFile(path, tomllib.load(handle))
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
