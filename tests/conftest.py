from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon_process import SLOW_DELAY, DaemonProcess, short_temp_dir
from tests.support.full_store import mounted_small_disk
from tests.support.postgres import (
    PostgresCluster,
    PostgresUnavailable,
    start_cluster,
    unavailable,
)
from tests.support.privileged import stranger as stranger  # a fixture for every test

# What would make a test read the developer's own setup: copilotd's variables
# (config file, socket, data dir, token) and the provider SDKs' keys and URLs.
DEVELOPER_VARIABLES = ("COPILOTD_", "OPENAI_", "ANTHROPIC_", "AZURE_OPENAI_")
# The XDG homes copilotd and its client fall back to for config, data and the socket.
XDG_HOMES = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR")


@pytest.fixture(autouse=True, scope="session")
def away_from_the_developers_setup() -> Iterator[None]:
    """Every process the tests start (daemons, CLI runs, auto-starting clients)
    inherits an environment with XDG homes of its own and none of the developer's
    copilotd or provider variables, so their config, data and daemon stay out."""
    homes = short_temp_dir("env")
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(DEVELOPER_VARIABLES):
                patch.delenv(name)
        for name in XDG_HOMES:
            home = homes / name.lower()
            home.mkdir(mode=0o700)
            patch.setenv(name, str(home))
        yield
    shutil.rmtree(homes, ignore_errors=True)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    path = short_temp_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(short_tmp: Path) -> Iterator[DaemonProcess]:
    process = DaemonProcess(short_tmp).start()
    yield process
    process.kill()


@pytest.fixture
def slow_daemon(short_tmp: Path) -> Iterator[DaemonProcess]:
    """A daemon whose offline model takes over a second per turn."""
    process = DaemonProcess(short_tmp, extra_args=["--offline-delay", SLOW_DELAY]).start()
    yield process
    process.kill()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """The test session's private PostgreSQL server, started on first use."""
    try:
        cluster = start_cluster()
    except PostgresUnavailable as error:
        unavailable(str(error))
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_database(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh empty database of its own for one test (its name)."""
    name = postgres_cluster.create_database()
    yield name
    postgres_cluster.drop_database(name)


@pytest.fixture
def small_disk(short_tmp: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs for the test's data (root only; skips otherwise)."""
    with mounted_small_disk(short_tmp) as mount_point:
        yield mount_point
