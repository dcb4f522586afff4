"""Tests never read the developer's own config, data or daemon.

A developer with ``~/.config/copilotd/config.toml`` (say, the README's Ollama
example), ``COPILOTD_*`` variables or a daemon of their own must see the same
results as CI. Here that setup is a broken config file: any test process that
read it would fail to start.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import copilotd
from bench._daemon import BenchDaemon
from copilot_client import CopilotClient
from tests.support.autostart import kill_auto_started
from tests.support.cli import copilotd as run_copilotd
from tests.support.cli import ok
from tests.support.daemon_process import DaemonProcess

ROOT = Path(__file__).resolve().parent.parent
BROKEN_CONFIG = "[store\nthis is not TOML\n"
CHILD_TIMEOUT = 120.0


def developer_setup(root: Path) -> dict[str, str]:
    """A developer's environment: a broken config at the default place and named by
    ``COPILOTD_CONFIG``, and a socket and data dir of their own."""
    home = root / "home"
    config = home / ".config" / "copilotd" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(BROKEN_CONFIG)
    (root / "run").mkdir(mode=0o700)
    return {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_RUNTIME_DIR": str(root / "run"),
        "COPILOTD_CONFIG": str(config),
        "COPILOTD_SOCKET": str(root / "run" / "theirs.sock"),
        "COPILOTD_DATA_DIR": str(home / "their-data"),
    }


def untouched(developer: dict[str, str]) -> list[str]:
    """The developer's socket and data folders that a test created (none, rightly)."""
    home = Path(developer["HOME"])
    theirs = [
        Path(developer["COPILOTD_SOCKET"]),
        Path(developer["COPILOTD_DATA_DIR"]),
        home / ".local" / "share" / "copilotd",
        Path(developer["XDG_RUNTIME_DIR"]) / "copilotd",
    ]
    return [str(path) for path in theirs if path.exists()]


def test_test_daemons_and_cli_runs_read_a_config_home_of_their_own(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if the session's isolation had missed them: the helpers must hold on their own.
    developer = developer_setup(short_tmp / "developer")
    for name, value in developer.items():
        monkeypatch.setenv(name, value)
    daemon = DaemonProcess(short_tmp / "tests").start()
    try:
        assert "sessions" in ok(run_copilotd(daemon, "status"))
    finally:
        daemon.kill()
    bench = BenchDaemon(short_tmp / "bench").start()
    assert bench.stop()["exit_code"] == 0
    assert untouched(developer) == []


async def test_a_default_client_auto_starts_a_daemon_of_the_sessions_own() -> None:
    """No socket, no data dir, no config given: all three come from the test session."""
    socket_path = Path(os.environ["XDG_RUNTIME_DIR"]) / "copilotd" / "copilotd.sock"
    data_dir = Path(os.environ["XDG_DATA_HOME"]) / "copilotd"
    try:
        async with CopilotClient() as client:
            assert await client.ping() == copilotd.__version__
        assert socket_path.is_socket() and (data_dir / "copilotd.log").is_file()
    finally:
        kill_auto_started(socket_path, data_dir)


def test_the_developers_setup_does_not_reach_a_test_session(short_tmp: Path) -> None:
    developer = developer_setup(short_tmp)
    inner = test_a_default_client_auto_starts_a_daemon_of_the_sessions_own.__name__
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{__file__}::{inner}"],
        cwd=ROOT,
        env={**os.environ, **developer},
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert untouched(developer) == []
