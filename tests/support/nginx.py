"""Debian's nginx as a gRPC balancer for tests, run from docs/examples/nginx-copilotd.conf.

The test fills the example's ``@NAME@`` placeholders and runs the file as it
is, so the configuration the deployment guide shows is the one tested. nginx
runs in the foreground under the test's control (``daemon off``), with its
own prefix, pid file, logs and temporary folders in a fresh folder: never the
system's. As root (CI) it runs as an unprivileged user, which owns that
folder; its stderr also gets the error log, so the test sees it start.

Where nginx is missing, the tests that need it are skipped with the reason,
except on CI, where they fail (``scripts/test.sh`` installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tests.support.certificates import IssuedCertificate
from tests.support.needs import missing
from tests.support.privileged import unprivileged_user

EXAMPLE_CONFIG: Final = Path(__file__).resolve().parents[2] / "docs/examples/nginx-copilotd.conf"
# The Debian package creates www-data; nobody is everywhere.
UNPRIVILEGED_USERS: Final = ("www-data", "nobody")
START_TIMEOUT: Final = 30.0
# Logged once the listening sockets are bound and the workers are starting.
READY_MARKER: Final = "start worker processes"
ADDRESS_IN_USE: Final = "Address already in use"
WORKER_STARTED: Final = re.compile(r"start worker process (\d+)")
# A worker logs it when told to quit: it no longer accepts connections.
WORKER_QUITTING: Final = "gracefully shutting down"
PLACEHOLDER: Final = re.compile(r"@[A-Z0-9_]+@")
START_ATTEMPTS: Final = 3


def nginx_binary() -> Path:
    """The nginx program; the test is skipped (failed on CI) without it."""
    # /usr/sbin is not on every user's PATH.
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if found is None:
        missing(
            "nginx is needed and is not installed; scripts/test.sh installs Debian's nginx package"
        )
    return Path(found)


def free_loopback_port() -> int:
    """A port nothing listens on now (nginx cannot bind port 0 and say which it got)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class BalancerSettings:
    """What the example configuration leaves to fill in.

    Args:
        daemons: ``HOST:PORT`` of each daemon's TCP listener, in the order of
            the upstream's ``server`` lines.
        certificate: What nginx presents to clients.
        daemon_ca: The CA file nginx checks the daemons' certificates against.
        daemon_tls_name: The name the daemons' certificates are for.
    """

    daemons: Sequence[str]
    certificate: IssuedCertificate
    daemon_ca: Path
    daemon_tls_name: str
    edit: Callable[[str], str] | None = None
    """A change to the filled-in example, for a fault the example does not make."""


class NginxBalancer:
    """One nginx process in front of the daemons, listening on a loopback port."""

    def __init__(self, settings: BalancerSettings) -> None:
        self.binary = nginx_binary()
        try:
            self._user = unprivileged_user(UNPRIVILEGED_USERS)
        except LookupError as error:
            missing(f"{error} to run nginx")
        # Its own folder under /tmp: a test's folder (0700, root's) would be
        # closed to the unprivileged user nginx runs as.
        self.root = Path(tempfile.mkdtemp(prefix="ngx", dir="/tmp"))
        self.settings = settings
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._output_changed = threading.Condition()

    @property
    def address(self) -> str:
        """``HOST:PORT`` clients connect to."""
        return f"127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.root / "nginx.conf"

    @property
    def error_log(self) -> str:
        path = self.root / "error.log"
        return path.read_text() if path.exists() else ""

    def _write_config(self) -> None:
        """The example, filled in; its TLS files copied where nginx's user reads them."""
        certificate = shutil.copy(self.settings.certificate.cert, self.root / "balancer.crt")
        key = shutil.copy(self.settings.certificate.key, self.root / "balancer.key")
        daemon_ca = shutil.copy(self.settings.daemon_ca, self.root / "daemon-ca.crt")
        values = {
            "RUN_DIR": str(self.root),
            "LISTEN": self.address,
            "BALANCER_CERT": str(certificate),
            "BALANCER_KEY": str(key),
            "DAEMON_CA": str(daemon_ca),
            "DAEMON_TLS_NAME": self.settings.daemon_tls_name,
        }
        values |= {f"DAEMON_{n}": a for n, a in enumerate(self.settings.daemons, start=1)}
        text = EXAMPLE_CONFIG.read_text()
        for name, value in values.items():
            text = text.replace(f"@{name}@", value)
        directives = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        left = PLACEHOLDER.findall("\n".join(directives))
        assert not left, f"{EXAMPLE_CONFIG.name} has placeholders the test does not fill: {left}"
        if self.settings.edit is not None:
            text = self.settings.edit(text)
        self.config_path.write_text(text)
        if self._user is not None:
            for path in (self.root, *self.root.iterdir()):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _command(self, *extra: str) -> list[str]:
        return [
            str(self.binary),
            "-p",
            f"{self.root}/",
            "-c",
            str(self.config_path),
            "-e",
            str(self.root / "error.log"),
            *extra,
        ]

    def _user_options(self) -> dict[str, Any]:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def check_config(self) -> None:
        """``nginx -t``: the filled-in example is a valid configuration."""
        result = subprocess.run(
            self._command("-t"),
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            **self._user_options(),
        )
        assert result.returncode == 0, (
            f"nginx -t refused the configuration ({result.returncode}):\n"
            f"{result.stdout}{result.stderr}{self.error_log}"
        )

    def start(self) -> NginxBalancer:
        """Starts nginx on a free port (another, if a racing process took the port)."""
        for _ in range(START_ATTEMPTS):
            self.port = free_loopback_port()
            self._write_config()
            self.check_config()
            if self._launch():
                return self
            if ADDRESS_IN_USE not in "".join(self.output):
                break
        raise AssertionError("nginx did not start:\n" + "".join(self.output) + self.error_log)

    def reload(self, settings: BalancerSettings) -> None:
        """Serves ``settings`` from now on, as ``nginx -s reload`` does (SIGHUP).

        Returns once every worker of the old configuration has stopped taking
        connections: new calls then meet the new one. The old workers finish
        the calls they carry (a live event stream stays where it is).
        """
        assert self.process is not None and self.process.poll() is None
        self.settings = settings
        # No `nginx -t` here: forking as another user while a gRPC client runs
        # in this process crashes the child (grpc's fork handlers). The master
        # checks the file itself; what it refuses is in the log below.
        self._write_config()
        with self._output_changed:
            old_workers = WORKER_STARTED.findall("".join(self.output))
        self.process.send_signal(signal.SIGHUP)

        def old_workers_quit() -> bool:
            log = "".join(self.output)
            return all(f"{pid}#{pid}: {WORKER_QUITTING}" in log for pid in old_workers)

        with self._output_changed:
            reloaded = self._output_changed.wait_for(old_workers_quit, START_TIMEOUT)
        assert reloaded, "nginx did not reload:\n" + "".join(self.output) + self.error_log

    def _launch(self) -> bool:
        """Runs nginx; whether it got as far as serving."""
        first_line = len(self.output)
        # Set when this nginx closed its stderr: it exited, though it may not
        # be reaped yet. One per process: a predecessor's reader may end late.
        ended = threading.Event()
        self.process = subprocess.Popen(
            # stderr notice too: the readiness marker, and what went wrong at once.
            self._command("-g", "daemon off; error_log stderr notice;"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            **self._user_options(),
        )
        threading.Thread(target=self._read_output, args=(self.process, ended), daemon=True).start()

        def started_or_exited() -> bool:
            return ended.is_set() or any(READY_MARKER in line for line in self.output[first_line:])

        with self._output_changed:
            self._output_changed.wait_for(started_or_exited, START_TIMEOUT)
            ready = any(READY_MARKER in line for line in self.output[first_line:])
        if ready and self.process.poll() is None:
            return True
        self.stop()
        return False

    def _read_output(self, process: subprocess.Popen[str], ended: threading.Event) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            with self._output_changed:
                self.output.append(line)
                self._output_changed.notify_all()
        with self._output_changed:
            ended.set()
            self._output_changed.notify_all()

    def stop(self) -> None:
        """SIGTERM (nginx's fast shutdown), then SIGKILL if it lingers."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(START_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def remove(self) -> None:
        """Stops nginx and removes its folder."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
