"""The ``[store]`` table of the config file and ``--max-store-bytes``::

    [store]
    backend = "lmdb"      # the only one today (the default)
    max_size = "512MiB"   # writes beyond it get RESOURCE_EXHAUSTED (default: no cap)

A size is a number of bytes or a number with a unit: ``512MiB``, ``2 GiB``,
``800k`` (K, M, G, T are powers of 1024 here, as for disks' "GiB"). Parsing
that takes a few lines, so no library is pulled in for it.
"""

from __future__ import annotations

import re
from typing import Final

from copilotd.config import ConfigError, ConfigFile, StoreConfig
from copilotd.store import SERVED_BACKENDS
from copilotd.store.lmdb_environment import MIN_MAP_SIZE, MIN_RESERVE

TABLE: Final = "store"
KEYS: Final = ("backend", "max_size")

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


def load_store_config(config_file: ConfigFile, max_store_flag: str | None) -> StoreConfig:
    """``[store]`` with ``--max-store-bytes`` over its ``max_size``; raises ``ConfigError``."""
    table = config_file.table(TABLE, KEYS)
    backend = table.get("backend", StoreConfig.backend)
    where = f"{config_file.where()}: [{TABLE}] backend"
    if not isinstance(backend, str):
        raise ConfigError(f'{where} must be a string like "lmdb", not {backend!r}')
    if backend not in SERVED_BACKENDS:
        raise ConfigError(
            f"{where} = {backend!r} is not a backend copilotd can serve from; "
            f"the known ones: {', '.join(SERVED_BACKENDS)}"
        )
    return StoreConfig(backend=backend, max_size=max_store_bytes(config_file, max_store_flag))


def max_store_bytes(config_file: ConfigFile, cli_value: str | None) -> int | None:
    """The store's size cap: ``--max-store-bytes``, else ``[store] max_size``, else none."""
    if cli_value is not None:
        return parse_size(cli_value, "--max-store-bytes")
    value = config_file.section(TABLE).get("max_size")
    if value is None:
        return None
    return parse_size(value, f"{config_file.where()} [{TABLE}] max_size")
