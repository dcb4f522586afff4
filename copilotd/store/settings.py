"""The ``[store]`` table of the config file, ``--max-store-bytes`` and ``--store-dsn``::

    [store]
    backend = "lmdb"      # the default; or "postgresql"
    max_size = "512MiB"   # lmdb: writes beyond it get RESOURCE_EXHAUSTED (default: no cap)
    dsn = "host=db.example dbname=copilotd user=copilotd"   # postgresql: where
    dsn_env = "COPILOTD_STORE_DSN"  # postgresql: or the variable that holds the DSN
    lease_seconds = 30    # postgresql: how soon another daemon takes over a dead one's turns

``--store-dsn`` (or its variable ``COPILOTD_STORE_DSN``) selects "postgresql"
and overrides ``dsn``/``dsn_env``. A DSN with a password belongs in a variable
or a private file, not in a config file others can read.

A size is a number of bytes or a number with a unit: ``512MiB``, ``2 GiB``,
``800k`` (K, M, G, T are powers of 1024 here, as for disks' "GiB"). Parsing
that takes a few lines, so no library is pulled in for it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

from copilotd.config import ConfigError, ConfigFile, StoreConfig
from copilotd.store import SERVED_BACKENDS
from copilotd.store.lmdb_environment import MIN_MAP_SIZE, MIN_RESERVE

TABLE: Final = "store"
KEYS: Final = ("backend", "max_size", "dsn", "dsn_env", "lease_seconds")
# Renewal runs every third of a lease: a lease shorter than this would need
# renewals faster than a busy database reliably answers.
MIN_LEASE_SECONDS: Final = 0.5
MAX_LEASE_SECONDS: Final = 3600.0
POSTGRESQL: Final = "postgresql"

_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE: Final = re.compile(r"\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)
MIN_STORE_CAP: Final = MIN_MAP_SIZE + MIN_RESERVE


def parse_size(text: str | int, what: str) -> int:
    """Bytes from ``text`` ("512MiB", "1g", 1048576); ``ConfigError`` naming ``what``."""
    if isinstance(text, int) and not isinstance(text, bool):
        size = text
    else:
        match = _SIZE.fullmatch(str(text))
        if match is None:
            raise ConfigError(f"{what}: {text!r} is not a size (e.g. 1048576, 512MiB, 2GiB)")
        size = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if size < MIN_STORE_CAP:
        raise ConfigError(f"{what}: {size} bytes is too small; the least is {MIN_STORE_CAP}")
    return size


def load_store_config(
    config_file: ConfigFile, max_store_flag: str | None, dsn_flag: str | None = None
) -> StoreConfig:
    """``[store]``, ``--max-store-bytes`` and ``--store-dsn`` over it; raises ``ConfigError``."""
    table = config_file.table(TABLE, KEYS)
    where = f"{config_file.where()}: [{TABLE}]"
    backend = table.get("backend", POSTGRESQL if dsn_flag else StoreConfig.backend)
    if not isinstance(backend, str):
        raise ConfigError(f'{where} backend must be a string like "lmdb", not {backend!r}')
    if backend not in SERVED_BACKENDS:
        raise ConfigError(
            f"{where} backend = {backend!r} is not a backend copilotd can serve from; "
            f"the known ones: {', '.join(SERVED_BACKENDS)}"
        )
    if backend != POSTGRESQL:
        for key in ("dsn", "dsn_env", "lease_seconds"):
            if key in table:
                raise ConfigError(
                    f'{where} {key} is for backend = "{POSTGRESQL}", not {backend!r}; '
                    f'remove it or set backend = "{POSTGRESQL}"'
                )
        if dsn_flag:
            raise ConfigError(
                f'--store-dsn selects backend "{POSTGRESQL}", but {where} backend = {backend!r}; '
                "drop one of them"
            )
        return StoreConfig(backend=backend, max_size=max_store_bytes(config_file, max_store_flag))
    if max_store_flag is not None or "max_size" in table:
        raise ConfigError(
            f"{where} max_size and --max-store-bytes apply to the lmdb backend only; "
            "a PostgreSQL store's space is the database server's to manage"
        )
    return StoreConfig(
        backend=backend,
        dsn=dsn_flag or _configured_dsn(table, where),
        lease_seconds=_lease_seconds(table.get("lease_seconds", StoreConfig.lease_seconds), where),
    )


def _lease_seconds(value: object, where: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not MIN_LEASE_SECONDS <= value <= MAX_LEASE_SECONDS
    ):
        raise ConfigError(
            f"{where} lease_seconds must be a number of seconds from {MIN_LEASE_SECONDS} to "
            f"{MAX_LEASE_SECONDS:.0f}, not {value!r}: how long a daemon's turns stay its own "
            "without renewal before another daemon takes them over"
        )
    return float(value)


def _configured_dsn(table: dict[str, object], where: str) -> str:
    """``dsn``, or the value of the variable ``dsn_env`` names (exactly one of them)."""
    dsn, variable = table.get("dsn"), table.get("dsn_env")
    if dsn is not None and variable is not None:
        raise ConfigError(f"{where} has both dsn and dsn_env; keep one")
    if dsn is not None:
        if not isinstance(dsn, str) or not dsn.strip():
            raise ConfigError(f'{where} dsn must be a connection string like "host=… dbname=…"')
        return dsn
    if variable is None:
        raise ConfigError(
            f'{where} backend = "{POSTGRESQL}" needs dsn, dsn_env or --store-dsn: where the '
            'database is, e.g. dsn = "host=/run/postgresql dbname=copilotd"'
        )
    if not isinstance(variable, str) or not variable:
        raise ConfigError(f"{where} dsn_env must name an environment variable, not {variable!r}")
    value = os.environ.get(variable, "")
    if not value.strip():
        raise ConfigError(
            f"{where} dsn_env = {variable!r}, but that environment variable is "
            f"{'empty' if variable in os.environ else 'not set'}; set it to the DSN"
        )
    return value


def describe_store(config: StoreConfig, path: Path) -> str:
    """Which backend serves and where, for status and logs; never a password."""
    if config.backend == POSTGRESQL and config.dsn is not None:
        # psycopg takes longer to import than the rest of the store: only a
        # PostgreSQL daemon loads it.
        from copilotd.store.postgres_schema import describe_dsn

        return describe_dsn(config.dsn)
    return f"{config.backend} {path}"


def max_store_bytes(config_file: ConfigFile, cli_value: str | None) -> int | None:
    """The store's size cap: ``--max-store-bytes``, else ``[store] max_size``, else none."""
    if cli_value is not None:
        return parse_size(cli_value, "--max-store-bytes")
    value = config_file.section(TABLE).get("max_size")
    if value is None:
        return None
    return parse_size(value, f"{config_file.where()} [{TABLE}] max_size")
