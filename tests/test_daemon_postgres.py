"""A real daemon on PostgreSQL: the recipe survives SIGKILL, the data lives in the
database (not the data directory), and the DSN's password shows up nowhere."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from copilotd.cli.main import STORE_DSN_ENV
from copilotd.store.postgres_schema import SCHEMA
from tests.support.cli import copilotd, ok
from tests.support.daemon_process import DaemonProcess
from tests.support.example import check_resumed_output, run_step
from tests.support.postgres import APP_PASSWORD, APP_ROLE, PostgresCluster


def test_recipe_on_postgresql_survives_sigkill_and_a_new_data_dir(
    short_tmp: Path, postgres_cluster: PostgresCluster, postgres_database: str
) -> None:
    dsn = postgres_cluster.dsn(postgres_database, user=APP_ROLE, password=APP_PASSWORD)
    # In the environment, as a deployment would pass it: never on the command line.
    first = DaemonProcess(short_tmp, extra_env={STORE_DSN_ENV: dsn}).start()
    try:
        created = run_step("create", first.env)
        assert "user-123-conversation" in created
        status = json.loads(ok(copilotd(first, "status", "--json")))
        backup = copilotd(first, "backup", str(short_tmp / "backup"))
        assert backup.returncode != 0
        assert "pg_dump --schema=copilotd" in backup.stderr
    finally:
        first.kill()

    # Another data directory, as on another host: the history must come from the database.
    second = DaemonProcess(
        short_tmp, extra_env={STORE_DSN_ENV: dsn}, data_dir=short_tmp / "other-host"
    ).start()
    try:
        check_resumed_output(run_step("resume", second.env))
    finally:
        second.terminate()

    assert status["store"] == (
        f"postgresql host={postgres_cluster.socket_dir} dbname={postgres_database} user={APP_ROLE}"
    )
    assert not (short_tmp / "data" / "store").exists()  # no LMDB store was made
    for output in (first.output, second.output):
        log = "".join(output)
        assert "store: postgresql host=" in log
        assert APP_PASSWORD not in log
    with psycopg.connect(postgres_cluster.dsn(postgres_database)) as connection:
        # The recipe's second step deleted its session: the deletion reached the database.
        assert connection.execute(f"SELECT count(*) FROM {SCHEMA}.sessions").fetchone() == (0,)


def test_a_daemon_refuses_to_start_on_a_wrong_password(
    short_tmp: Path, postgres_cluster: PostgresCluster, postgres_database: str
) -> None:
    wrong = "wrong-" + APP_PASSWORD
    dsn = postgres_cluster.dsn(postgres_database, user=APP_ROLE, password=wrong)
    daemon = DaemonProcess(short_tmp, extra_env={STORE_DSN_ENV: dsn})
    with pytest.raises(RuntimeError, match="did not start"):
        daemon.start()
    log = "".join(daemon.output)
    assert "cannot start: cannot connect to the copilotd store at postgresql host=" in log
    assert "password authentication failed" in log
    assert wrong not in log
