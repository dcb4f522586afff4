"""The daemons the crash harness kills: one on LMDB, or several on one PostgreSQL database.

Every daemon reads one config (written 0600: it holds the strict fake
provider's inline keys): the offline model is the default, so the workers'
turns need no network, and two models, ``gpt-test`` (OpenAI's wire format)
and ``claude-test`` (Anthropic's), are served by ``FakeModelServer``, which
refuses a history whose tool calls and results do not pair up. On
PostgreSQL the config also sets a short turn lease, so that a survivor takes
a killed daemon's turns over soon.

The store is checked with no daemon writing to it: on LMDB the only daemon
is dead at that moment; on PostgreSQL the survivors are frozen (SIGSTOP)
and the check waits until no commit of theirs is still in flight.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from copilotd.cli.main import STORE_DSN_ENV
from copilotd.store.postgres_store import PostgresStore
from tests.support.daemon_process import DaemonProcess
from tests.support.store_check import StoreReport, check_opened_store, check_store

STRICT_MODELS = ("gpt-test", "claude-test")
# Short, so that a killed daemon's turns are taken over soon; long enough
# that the survivors, frozen while the store is checked, keep their leases.
LEASE_SECONDS = 4.0
QUIET_TIMEOUT = 30.0
# Statements at work: not those waiting for a frozen daemon (to read a result
# it sent, or for a lock its open transaction holds), which cannot commit.
IN_FLIGHT = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND state = 'active' AND pid <> pg_backend_pid()"
    " AND coalesce(wait_event_type, '') NOT IN ('Lock', 'Client')"
)


def config_text(server_url: str, *, shared: bool) -> str:
    text = f"""
[models]
default = "offline"

[providers.local]
type = "offline"
models = ["offline"]

[providers.openai]
type = "openai"
base_url = "{server_url}/v1"
api_key = "sk-crash-harness-openai"
max_retries = 0
models = ["gpt-test"]

[providers.anthropic]
type = "anthropic"
base_url = "{server_url}"
api_key = "sk-ant-crash-harness"
max_output_tokens = 1000
max_retries = 0
models = ["claude-test"]
"""
    if shared:
        text += f"""
[store]
lease_seconds = {LEASE_SECONDS}
"""
    return text


class Daemons:
    """``count`` daemons: on LMDB (``dsn`` None, one daemon) or all on the database ``dsn``."""

    def __init__(
        self, root: Path, server_url: str, *, count: int, dsn: str | None, offline_delay: float
    ) -> None:
        if dsn is None and count != 1:
            raise ValueError("several daemons need a PostgreSQL store (one LMDB has one daemon)")
        self.dsn = dsn
        config = root / "config.toml"
        config.write_text(config_text(server_url, shared=dsn is not None))
        os.chmod(config, 0o600)
        arguments = ["--config", str(config), "--offline-delay", str(offline_delay)]
        extra_env = {STORE_DSN_ENV: dsn} if dsn is not None else {}
        self.members = [
            DaemonProcess(root / f"d{n}", arguments, extra_env=extra_env) for n in range(count)
        ]
        self._store: PostgresStore | None = None

    @property
    def shared(self) -> bool:
        return self.dsn is not None

    def start(self) -> None:
        for daemon in self.members:
            daemon.start()
        if self.dsn is not None:
            self._store = PostgresStore.open(self.dsn, lease_owner="crash-harness")

    def alive(self) -> list[DaemonProcess]:
        return [d for d in self.members if d.process is not None and d.process.poll() is None]

    def check(self) -> StoreReport:
        """The whole store checked, with no daemon writing meanwhile."""
        if self._store is None:
            return check_store(self.members[0].data_dir)
        with self._frozen():
            return check_opened_store(self._store)

    @contextmanager
    def _frozen(self) -> Iterator[None]:
        frozen = self.alive()
        for daemon in frozen:
            assert daemon.process is not None
            daemon.process.send_signal(signal.SIGSTOP)
        try:
            self._wait_quiet()
            yield
        finally:
            for daemon in frozen:
                assert daemon.process is not None
                daemon.process.send_signal(signal.SIGCONT)

    def _wait_quiet(self) -> None:
        """Until no statement of a frozen daemon runs: a commit sent just before the
        freeze lands before the check reads, never in the middle of it."""
        assert self.dsn is not None
        deadline = time.monotonic() + QUIET_TIMEOUT
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            while True:
                row = connection.execute(IN_FLIGHT).fetchone()
                if row is not None and row[0] == 0:
                    return
                if time.monotonic() > deadline:
                    raise AssertionError(f"statements still running after {QUIET_TIMEOUT} s")
                time.sleep(0.01)  # polling the server's own view: nothing to await

    def save_logs(self) -> list[Path]:
        """Each daemon's log (all its runs), written beside its data; their paths."""
        paths = []
        for daemon in self.members:
            daemon.root.mkdir(parents=True, exist_ok=True)  # a daemon that never started
            path = daemon.root / "daemon.log"
            path.write_text("".join(daemon.output))
            paths.append(path)
        return paths

    def stop(self) -> list[int]:
        """SIGTERM each live daemon; their exit codes."""
        return [daemon.terminate() for daemon in self.alive()]

    def close(self) -> None:
        """SIGKILL whatever still runs and let go of the database."""
        for daemon in self.members:
            daemon.kill()
        if self._store is not None:
            self._store.close()
            self._store = None
