"""A private PostgreSQL cluster for the tests: one per test session, one database per test.

The cluster is Debian's ``initdb`` and ``pg_ctl`` on a Unix socket in a
temporary directory (no TCP port, so parallel runs cannot collide). The
server refuses to run as root, and CI runs as root, so under root it runs as
an unprivileged system user (``postgres`` when the package created it, else
``nobody``), through ``subprocess``'s ``user=``.

``pg_hba.conf`` lets the superuser in without a password (the tests' own
administration) and asks every other role for its password (SCRAM), so the
tests can check that a daemon given a password in its DSN never shows it.

Where PostgreSQL is missing, tests that need it are skipped with the reason,
except on CI (``CI=true``), where they fail: a CI run must never pass by
quietly testing less.

``python -m bench`` starts its cluster here too (``start_cluster`` with
``DURABLE_SETTINGS``: its figures are about commits that reach the disk), so
this module imports pytest only where a test needs it.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NoReturn

import psycopg
from psycopg import sql

from tests.support.needs import missing
from tests.support.privileged import unprivileged_user

SUPERUSER: Final = "postgres"
APP_ROLE: Final = "copilotd_app"
APP_PASSWORD: Final = "app-password-never-shown"
START_TIMEOUT_SECONDS: Final = 60
# Small: up to six test runs may share two cores and their memory.
SERVER_SETTINGS: Final = (
    "listen_addresses=''",
    "shared_buffers=16MB",
    "max_connections=200",
    # The tests kill daemons, never the machine: durability across a daemon's
    # crash is the server's commit, which does not need the disk flushed.
    "fsync=off",
    "full_page_writes=off",
)
# For the benchmark: every commit synced to the disk, as in production (the
# server's defaults for fsync, synchronous_commit and full_page_writes), and
# room for a store of 100,000 sessions in memory.
DURABLE_SETTINGS: Final = (
    "listen_addresses=''",
    "shared_buffers=256MB",
    "max_connections=200",
)
UNPRIVILEGED_USERS: Final = ("postgres", "nobody")


class PostgresUnavailable(Exception):
    """The private cluster cannot be started here (the message says why)."""


def server_bin_dir() -> Path:
    """The directory of ``initdb`` and ``pg_ctl``: on PATH, else Debian's newest version."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda path: int(Path(path).parent.parent.name),
    )
    if not candidates:
        raise PostgresUnavailable(
            "PostgreSQL's server programs (initdb, pg_ctl) are not installed; "
            "scripts/test.sh installs Debian's postgresql package"
        )
    return Path(candidates[-1]).parent


def _server_user() -> pwd.struct_passwd | None:
    """Whom the server runs as: this user, or an unprivileged one when this is root."""
    try:
        return unprivileged_user(UNPRIVILEGED_USERS)
    except LookupError as error:
        raise PostgresUnavailable(f"{error} to run PostgreSQL") from None


@dataclass
class PostgresCluster:
    """A running private cluster; ``dsn`` builds a connection string to one of its databases."""

    root: Path
    bin_dir: Path
    user: pwd.struct_passwd | None
    settings: tuple[str, ...] = SERVER_SETTINGS
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    def dsn(self, dbname: str, *, user: str = SUPERUSER, password: str | None = None) -> str:
        parts = [f"host={self.socket_dir}", f"dbname={dbname}", f"user={user}"]
        if password is not None:
            parts.append(f"password={password}")
        return " ".join(parts)

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn("postgres"), autocommit=True)

    def create_database(self) -> str:
        """A new empty database, for one test; its name."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        with self.admin() as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            connection.execute(
                sql.SQL("GRANT ALL ON DATABASE {} TO {}").format(
                    sql.Identifier(name), sql.Identifier(APP_ROLE)
                )
            )
        # PostgreSQL 15 no longer lets every role create objects in "public".
        with psycopg.connect(self.dsn(name), autocommit=True) as connection:
            connection.execute(
                sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(APP_ROLE))
            )
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def _run(self, command: list[str]) -> None:
        """Run a server program as the server's user; ``PostgresUnavailable`` if it fails."""
        options: dict[str, Any] = {}
        if self.user is not None:
            options = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=self.root,
            timeout=START_TIMEOUT_SECONDS,
            **options,
        )
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"{Path(command[0]).name} failed ({result.returncode}): "
                f"{(result.stderr or result.stdout).strip()}"
            )

    def start(self) -> None:
        for directory in (self.root, self.data_dir, self.socket_dir):
            directory.mkdir(mode=0o700, exist_ok=True)
            if self.user is not None:
                os.chown(directory, self.user.pw_uid, self.user.pw_gid)
        self._run(
            [
                str(self.bin_dir / "initdb"),
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
                f"--username={SUPERUSER}",
                "--auth=trust",
                "-D",
                str(self.data_dir),
            ]
        )
        # The superuser administers without a password; every other role needs one.
        (self.data_dir / "pg_hba.conf").write_text(
            f"local all {SUPERUSER} trust\nlocal all all scram-sha-256\n"
        )
        options = " ".join(f"-c {setting}" for setting in self.settings)
        self._run(
            [
                str(self.bin_dir / "pg_ctl"),
                "start",
                "--wait",
                f"--timeout={START_TIMEOUT_SECONDS}",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.root / "server.log"),
                "-o",
                f"{options} -c unix_socket_directories='{self.socket_dir}'",
            ]
        )
        with self.admin() as connection:
            connection.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(APP_ROLE), sql.Literal(APP_PASSWORD)
                )
            )

    def stop(self) -> None:
        try:
            self._run(
                [str(self.bin_dir / "pg_ctl"), "stop", "--mode=immediate", "-D", str(self.data_dir)]
            )
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(settings: tuple[str, ...] = SERVER_SETTINGS) -> PostgresCluster:
    """A private cluster, started; ``PostgresUnavailable`` (saying why) if it cannot be."""
    bin_dir = server_bin_dir()
    user = _server_user()
    # /tmp and a short name: the socket's path must stay under 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="cpg", dir="/tmp"))
    cluster = PostgresCluster(root=root, bin_dir=bin_dir, user=user, settings=settings)
    try:
        cluster.start()
    except BaseException:
        log = root / "server.log"
        detail = log.read_text() if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        if detail:
            raise PostgresUnavailable(f"the server did not start; its log:\n{detail}") from None
        raise
    return cluster


def unavailable(reason: str) -> NoReturn:
    """Fail on CI, skip elsewhere: CI must never pass by testing less."""
    missing(f"PostgreSQL is needed and cannot run here: {reason}")
