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
from typing import Any

from copilotd.config import CONFIG_ENV

READY_MARKER = "serving on"
START_TIMEOUT = 30.0
# Seconds before each of the offline model's ~6 deltas: a turn lasts over a
# second, long enough to watch, time out on, abort, or crash in the middle of.
SLOW_DELAY = "0.2"


def short_temp_dir(prefix: str = "cpd") -> Path:
    """A fresh private folder with a short path (Unix socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def own_config_env(config_home: Path) -> dict[str, str]:
    """``os.environ`` for a copilotd process that reads config only under ``config_home``.

    Without it a test daemon would read the developer's own
    ``~/.config/copilotd/config.toml`` (or ``$COPILOTD_CONFIG``) and serve
    their providers and limits instead of the test's.
    """
    env = {name: value for name, value in os.environ.items() if name != CONFIG_ENV}
    env["XDG_CONFIG_HOME"] = str(config_home)
    return env


class DaemonProcess:
    """``copilotd serve`` on its own socket and data dir, started and stopped by tests."""

    def __init__(
        self,
        root: Path,
        extra_args: Sequence[str] = (),
        *,
        extra_env: dict[str, str] | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.root = root
        self.socket_path = root / "run" / "copilotd.sock"
        self.data_dir = data_dir or root / "data"
        self.config_home = root / "config"
        self.extra_args = list(extra_args)
        self.extra_env = dict(extra_env or {})
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._output_changed = threading.Condition()
        self._reader: threading.Thread | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment in which clients find this daemon by default."""
        return {
            **own_config_env(self.config_home),
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

    def popen_options(self) -> dict[str, Any]:
        """More ``subprocess.Popen`` arguments (e.g. ``pass_fds``), for subclasses."""
        return {}

    def start(self) -> DaemonProcess:
        ready = threading.Event()
        first_line = len(self.output)
        self.process = subprocess.Popen(
            self.command(),
            env={**own_config_env(self.config_home), **self.extra_env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            **self.popen_options(),
        )
        # Each process gets its own event: the reader of a killed predecessor
        # reaching end-of-file must not wake the wait for this one.
        self._reader = threading.Thread(
            target=self._read_output, args=(self.process, ready), daemon=True
        )
        self._reader.start()
        # The marker, not just an event: the reader also wakes us at end of
        # output, when the process may not be reaped yet (poll() still None).
        if not ready.wait(START_TIMEOUT) or not self._served(self.process, first_line):
            self.kill()
            raise RuntimeError("copilotd did not start:\n" + "".join(self.output))
        return self

    def _served(self, process: subprocess.Popen[str], first_line: int) -> bool:
        with self._output_changed:
            marked = any(READY_MARKER in line for line in self.output[first_line:])
        return marked and process.poll() is None

    def _read_output(self, process: subprocess.Popen[str], ready: threading.Event) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            with self._output_changed:
                self.output.append(line)
                self._output_changed.notify_all()
            if READY_MARKER in line:
                ready.set()
        ready.set()  # exited: wake the waiter, which checks poll()
        with self._output_changed:
            self._output_changed.notify_all()

    def wait_for_output(self, text: str, timeout: float = START_TIMEOUT) -> str:
        """The first log line containing ``text``, once the daemon has written it."""

        def found() -> str | None:
            return next((line for line in self.output if text in line), None)

        with self._output_changed:
            self._output_changed.wait_for(
                lambda: (
                    found() is not None
                    or (self.process is not None and self.process.poll() is not None)
                ),
                timeout,
            )
            line = found()
        if line is None:
            raise AssertionError(f"the daemon never logged {text!r}:\n" + "".join(self.output))
        return line

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
