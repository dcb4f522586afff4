"""Fixtures of the provider tests: the fake model server and a daemon configured for it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from copilot_client import (
    CopilotClient,
)
from tests.support.daemon_process import DaemonProcess
from tests.support.fake_model_server import FakeModelServer
from tests.support.model_providers import (
    KEY_ENV,
    OPENAI_KEY,
    DaemonFactory,
    config_text,
    connect,
)


@pytest.fixture
def server() -> Iterator[FakeModelServer]:
    with FakeModelServer() as running:
        yield running


@pytest.fixture
def start_daemon(
    short_tmp: Path, server: FakeModelServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DaemonFactory]:
    """Starts copilotd with the config above (``models_extra`` goes into ``[models]``)."""
    monkeypatch.setenv(KEY_ENV, OPENAI_KEY)
    monkeypatch.delenv("COPILOTD_TEST_UNSET_VARIABLE", raising=False)
    started: list[DaemonProcess] = []

    def start(models_extra: str = "", args: tuple[str, ...] = ()) -> DaemonProcess:
        path = short_tmp / "config.toml"
        path.write_text(config_text(server, models_extra))
        path.chmod(0o600)  # it holds an inline key: copilotd refuses it readable by others
        daemon = DaemonProcess(short_tmp, ["--config", str(path), *args]).start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


@pytest.fixture
def daemon(start_daemon: DaemonFactory) -> DaemonProcess:
    return start_daemon()


@pytest.fixture
async def client(daemon: DaemonProcess) -> AsyncIterator[CopilotClient]:
    async with connect(daemon) as connected:
        yield connected
