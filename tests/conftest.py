from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon_process import SLOW_DELAY, DaemonProcess, short_temp_dir


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
