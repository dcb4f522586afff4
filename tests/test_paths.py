"""Client and daemon find the socket and the data the same way."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from copilot_client.paths import resolve_data_dir, resolve_socket_path


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COPILOTD_SOCKET", "COPILOTD_DATA_DIR", "XDG_RUNTIME_DIR", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)


def test_socket_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    tmp = Path(tempfile.gettempdir())
    assert resolve_socket_path() == tmp / f"copilotd-{os.getuid()}" / "copilotd.sock"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert resolve_socket_path() == Path("/run/user/1000/copilotd/copilotd.sock")
    monkeypatch.setenv("COPILOTD_SOCKET", "unix:/srv/c.sock")
    assert resolve_socket_path() == Path("/srv/c.sock")
    assert resolve_socket_path("/explicit.sock") == Path("/explicit.sock")


def test_data_dir_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_data_dir() == Path.home() / ".local" / "share" / "copilotd"
    monkeypatch.setenv("XDG_DATA_HOME", "/data/home")
    assert resolve_data_dir() == Path("/data/home/copilotd")
    monkeypatch.setenv("COPILOTD_DATA_DIR", "/var/c")
    assert resolve_data_dir() == Path("/var/c")
    assert resolve_data_dir("/explicit") == Path("/explicit")
