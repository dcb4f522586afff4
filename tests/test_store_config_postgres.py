"""``[store]`` for PostgreSQL: dsn, dsn_env and --store-dsn, and each mistake's message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from copilotd.config import ConfigError, ConfigFile, StoreConfig
from copilotd.store.settings import describe_store, load_store_config

DSN = "host=/run/postgresql dbname=copilotd user=app password=s3cret-pw"


def store_config(
    table: dict[str, Any], *, max_store: str | None = None, dsn: str | None = None
) -> StoreConfig:
    return load_store_config(ConfigFile(Path("/etc/c.toml"), {"store": table}), max_store, dsn)


def test_dsn_selects_the_database() -> None:
    config = store_config({"backend": "postgresql", "dsn": DSN})
    assert (config.backend, config.dsn, config.max_size) == ("postgresql", DSN, None)
    assert config.backend_options("host:/data") == {
        "dsn": DSN,
        "lease_owner": "host:/data",
        "lease_seconds": 30.0,
    }
    assert "s3cret-pw" not in repr(config)
    assert describe_store(config, Path("/unused")) == (
        "postgresql host=/run/postgresql dbname=copilotd user=app"
    )


def test_dsn_env_reads_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_STORE_DSN", DSN)
    assert store_config({"backend": "postgresql", "dsn_env": "MY_STORE_DSN"}).dsn == DSN
    monkeypatch.delenv("MY_STORE_DSN")
    with pytest.raises(
        ConfigError, match="'MY_STORE_DSN', but that environment variable is not set"
    ):
        store_config({"backend": "postgresql", "dsn_env": "MY_STORE_DSN"})
    monkeypatch.setenv("MY_STORE_DSN", " ")
    with pytest.raises(ConfigError, match="variable is empty"):
        store_config({"backend": "postgresql", "dsn_env": "MY_STORE_DSN"})


def test_the_flag_selects_postgresql_and_wins_over_the_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert store_config({}, dsn=DSN).backend == "postgresql"
    monkeypatch.delenv("UNSET_DSN", raising=False)
    config = store_config({"backend": "postgresql", "dsn_env": "UNSET_DSN"}, dsn=DSN)
    assert config.dsn == DSN


def test_lmdb_stays_the_default() -> None:
    config = store_config({}, max_store="1MiB")
    assert (config.backend, config.dsn, config.max_size) == ("lmdb", None, 1 << 20)
    assert config.backend_options() == {"max_map_size": 1 << 20}
    assert describe_store(config, Path("/data/store")) == "lmdb /data/store"


@pytest.mark.parametrize(
    ("table", "flags", "message"),
    [
        (
            {"backend": "postgresql"},
            {},
            r"needs dsn, dsn_env or --store-dsn: where the database is",
        ),
        ({"backend": "postgresql", "dsn": DSN, "dsn_env": "X"}, {}, "has both dsn and dsn_env"),
        ({"backend": "postgresql", "dsn": ""}, {}, "dsn must be a connection string"),
        ({"backend": "postgresql", "dsn_env": 3}, {}, "dsn_env must name an environment variable"),
        ({"dsn": DSN}, {}, r'dsn is for backend = "postgresql", not \'lmdb\''),
        ({"backend": "lmdb"}, {"dsn": DSN}, r"--store-dsn selects backend \"postgresql\""),
        ({"backend": "postgresql", "dsn": DSN, "max_size": "1GiB"}, {}, "lmdb backend only"),
        ({"backend": "postgresql", "dsn": DSN}, {"max_store": "1GiB"}, "lmdb backend only"),
        ({"backend": "postgres"}, {}, "known ones: lmdb, postgresql"),
    ],
)
def test_mistakes_are_refused_with_what_to_do(
    table: dict[str, Any], flags: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        store_config(table, **flags)
    assert str(refused.value).startswith("/etc/c.toml: [store]") or "--store-dsn" in str(
        refused.value
    )
    assert "s3cret-pw" not in str(refused.value)
