"""A real copilotd process for tests: temp socket, temp data dir, kill and restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

READY_MARKER = "serving on"
START_TIMEOUT = 30.0


def short_temp_dir(prefix: str = "cpd") -> Path:
    """A fresh private folder with a short path (Unix socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class DaemonProcess:
    """``copilotd serve`` on its own socket and data dir, started and stopped by tests."""

    def __init__(self, root: Path, extra_args: Sequence[str] = ()) -> None:
        self.root = root
        self.socket_path = root / "run" / "copilotd.sock"
        self.data_dir = root / "data"
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment in which clients find this daemon by default."""
        return {
            **os.environ,
            "COPILOTD_SOCKET": str(self.socket_path),
            "COPILOTD_DATA_DIR": str(self.data_dir),
        }

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "copilotd",
            "serve",
            "--socket",
            str(self.socket_path),
            "--data-dir",
            str(self.data_dir),
            *self.extra_args,
        ]

    def start(self) -> DaemonProcess:
        ready = threading.Event()
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Each process gets its own event: the reader of a killed predecessor
        # reaching end-of-file must not wake the wait for this one.
        self._reader = threading.Thread(
            target=self._read_output, args=(self.process, ready), daemon=True
        )
        self._reader.start()
        if not ready.wait(START_TIMEOUT) or self.process.poll() is not None:
            self.kill()
            raise RuntimeError("copilotd did not start:\n" + "".join(self.output))
        return self

    def _read_output(self, process: subprocess.Popen[str], ready: threading.Event) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            self.output.append(line)
            if READY_MARKER in line:
                ready.set()
        ready.set()  # exited: wake the waiter, which checks poll()

    def kill(self) -> None:
        """SIGKILL: the daemon gets no chance to clean up."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code. ``output`` then holds all the log."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        return code

    def restart_after_kill(self) -> DaemonProcess:
        self.kill()
        return self.start()
