"""``copilotd status``, ``copilotd stop`` and ``copilotd install-service``."""

from __future__ import annotations

import json
import os
import select
import shlex
import signal
import sys
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Final

import click

from copilot_client import DaemonTimeoutError, DaemonUnavailableError
from copilot_client.paths import resolve_data_dir, resolve_socket_path, socket_lock_path
from copilot_client.proto.admin.v1 import admin_pb2
from copilot_client.proto.v1 import copilot_pb2 as pb
from copilotd.admin.retention import format_duration
from copilotd.cli.common import (
    CliError,
    call_timeout,
    connect,
    human_bytes,
    reports_errors,
    run,
    socket_option,
    to_datetime,
)
from copilotd.runtime.datadir import STORE_SUBDIR

# `copilotd status` exits with this when the daemon is not running (as
# `systemctl status` does for an inactive unit).
NOT_RUNNING_EXIT: Final = 3
# ... and with this when something holds the socket but does not answer (LSB's
# "status unknown"): a stopped (SIGSTOP) or stuck daemon.
NOT_ANSWERING_EXIT: Final = 4
# Seconds `status` waits for an answer unless `copilotd --timeout` says otherwise.
STATUS_TIMEOUT: Final = 5.0
UNIT_NAMES: Final = ("copilotd.service", "copilotd.socket")
TEMPLATE_EXEC_START: Final = "ExecStart=%h/.local/bin/copilotd serve"
TEMPLATE_DATA_DIR: Final = "%h/.local/share/copilotd"


def retention_text(policy: admin_pb2.RetentionPolicy) -> str:
    parts = []
    if policy.max_age_seconds:
        parts.append(
            f"inactive for more than {format_duration(timedelta(seconds=policy.max_age_seconds))}"
        )
    if policy.HasField("max_sessions"):
        parts.append(f"beyond the {policy.max_sessions} most recent")
    if not parts:
        return "off"
    interval = format_duration(timedelta(seconds=policy.sweep_interval_seconds))
    return f"delete sessions {' and '.join(parts)}, swept every {interval}"


def file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@socket_option
@reports_errors
def status_command(as_json: bool, socket_path: Path | None) -> None:
    """Whether the daemon runs, and its version, socket, data, store, sessions, the
    config file it read and the providers and models it serves (never secrets).

    Exits 0 when it runs and 3 when it does not.
    """

    async def main() -> tuple[admin_pb2.GetDaemonStatusResponse, pb.ListModelsResponse]:
        async with connect(socket_path, timeout=call_timeout(STATUS_TIMEOUT)) as daemon:
            status: admin_pb2.GetDaemonStatusResponse = await daemon.call(
                daemon.admin.GetDaemonStatus, admin_pb2.GetDaemonStatusRequest()
            )
            models: pb.ListModelsResponse = await daemon.call(
                daemon.stub.ListModels, pb.ListModelsRequest()
            )
            return status, models

    try:
        status, models = run(main())
    except CliError as error:
        if not isinstance(error.__cause__, DaemonUnavailableError):
            raise
        if isinstance(error.__cause__, DaemonTimeoutError):
            _print_not_answering(resolve_socket_path(socket_path), as_json, error.__cause__)
            raise click.exceptions.Exit(NOT_ANSWERING_EXIT) from None
        _print_not_running(resolve_socket_path(socket_path), as_json)
        raise click.exceptions.Exit(NOT_RUNNING_EXIT) from None
    on_disk = file_size(Path(status.data_dir) / STORE_SUBDIR / "data.mdb")
    if as_json:
        report: dict[str, Any] = {
            "running": True,
            "version": status.version,
            "pid": status.pid,
            "socket": status.socket_path,
            "socket_activated": status.socket_activated,
            "data_dir": status.data_dir,
            "started": status.start_time.ToJsonString(),
            "store": status.store_location or None,
            "store_bytes": status.store_bytes,
            "store_file_bytes": on_disk,
            "sessions": status.session_count,
            "running_turns": status.running_turns,
            "retention": retention_text(status.retention),
            "metrics": status.metrics_address or None,
            "config_file": status.config_file or None,
            "store_backend": status.store_backend,
            "offline_only": models.offline_only,
            "models": [
                {
                    "id": model.id,
                    "provider": model.provider,
                    "provider_type": model.provider_type,
                    "default": model.is_default,
                }
                for model in models.models
            ],
        }
        click.echo(json.dumps(report, indent=2))
        return
    uptime = format_duration(
        timedelta(seconds=int((datetime.now(UTC) - to_datetime(status.start_time)).total_seconds()))
    )
    disk = f", {human_bytes(on_disk)} file" if on_disk is not None else ""
    lines = [
        f"copilotd {status.version} is running (pid {status.pid}, up {uptime})",
        f"socket:     {status.socket_path}{' (from systemd)' if status.socket_activated else ''}",
        f"data dir:   {status.data_dir}",
        f"config:     {status.config_file or 'none (built-in defaults)'}",
        f"store:      {status.store_location or status.store_backend}",
        f"            {human_bytes(status.store_bytes)} in use{disk}",
        *providers_lines(models),
        f"sessions:   {status.session_count} ({status.running_turns} turn(s) running)",
        f"retention:  {retention_text(status.retention)}",
        "metrics:    "
        + (f"http://{status.metrics_address}/metrics" if status.metrics_address else "off"),
    ]
    click.echo("\n".join(lines))


def providers_lines(models: pb.ListModelsResponse) -> list[str]:
    """One ``provider:`` line per provider: its type and models, the default marked."""
    if models.offline_only:
        return ["providers:  none configured (the offline model answers every model name)"]
    by_provider: dict[tuple[str, str], list[str]] = {}
    for model in models.models:
        name = model.id + (" (default)" if model.is_default else "")
        by_provider.setdefault((model.provider, model.provider_type), []).append(name)
    return [
        f"provider:   {provider} ({kind}): {', '.join(names)}"
        for (provider, kind), names in by_provider.items()
    ]


def _socket_holder(socket_path: Path) -> int | None:
    """The pid the daemon wrote into the lock beside its socket, if any."""
    try:
        text = socket_lock_path(socket_path).read_text().split()
    except OSError:
        return None
    return int(text[0]) if text and text[0].isdigit() else None


def _print_not_answering(socket_path: Path, as_json: bool, error: DaemonTimeoutError) -> None:
    pid = _socket_holder(socket_path)
    if as_json:
        report = {"running": True, "answering": False, "pid": pid, "socket": str(socket_path)}
        click.echo(json.dumps(report, indent=2))
        return
    who = f" (pid {pid})" if pid is not None else ""
    click.echo(f"copilotd{who} is not answering at {socket_path}: {error.message}")
    if pid is not None:
        click.echo(f"stopped?   `ps -o pid,stat,cmd -p {pid}` (state T); resume: kill -CONT {pid}")


def _print_not_running(socket_path: Path, as_json: bool) -> None:
    data_dir = resolve_data_dir()
    on_disk = file_size(data_dir / STORE_SUBDIR / "data.mdb")
    if as_json:
        report = {
            "running": False,
            "socket": str(socket_path),
            "data_dir": str(data_dir),
            "store_file_bytes": on_disk,
        }
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"copilotd is not running (nothing answers at {socket_path})")
    click.echo(f"data dir:   {data_dir}")
    click.echo(
        f"store:      {human_bytes(on_disk) + ' file' if on_disk is not None else 'none yet'}"
    )
    click.echo("start it:   copilotd serve, or systemctl --user start copilotd")


# -- stop -------------------------------------------------------------------------------

DEFAULT_STOP_TIMEOUT: Final = 30.0  # as the unit's TimeoutStopSec


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` (not our child) exits within ``timeout`` seconds."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)  # readable once the process has exited
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)


@click.command("stop")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_STOP_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the daemon to finish running turns and exit.",
)
@socket_option
@reports_errors
def stop_command(timeout: float, socket_path: Path | None) -> None:
    """Stop the daemon that serves the socket, and wait until it has exited cleanly.

    Only that daemon: the pid comes from the daemon itself, never from a name
    match. Running turns end with an "interrupted" marker. Exits 0 when it
    stopped or was not running.
    """

    async def main() -> admin_pb2.GetDaemonStatusResponse:
        async with connect(socket_path) as daemon:
            response: admin_pb2.GetDaemonStatusResponse = await daemon.call(
                daemon.admin.GetDaemonStatus, admin_pb2.GetDaemonStatusRequest()
            )
            return response

    try:
        status = run(main())
    except CliError as error:
        if not isinstance(error.__cause__, DaemonUnavailableError):
            raise
        click.echo(
            f"copilotd is not running (nothing answers at {resolve_socket_path(socket_path)})"
        )
        return
    try:
        os.kill(status.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # it exited between answering and the signal
    except PermissionError as error:
        raise CliError(
            f"cannot stop copilotd (pid {status.pid}): {error.strerror}; it runs as another user"
        ) from None
    if not wait_for_exit(status.pid, timeout):
        raise CliError(
            f"copilotd (pid {status.pid}) did not exit within {timeout:g} s; it may still be "
            f"closing its store. Wait, or force it with `kill -KILL {status.pid}` (turns "
            "still running are then closed at the next start)"
        )
    click.echo(f"stopped copilotd (pid {status.pid})")
    if status.socket_activated:
        click.echo(
            "its socket is systemd's: the next client starts it again; to keep it stopped run\n"
            "  systemctl --user stop copilotd.socket copilotd.service"
        )


# -- install-service --------------------------------------------------------------------


def unit_template(name: str) -> str:
    return resources.files("copilotd").joinpath("units", name).read_text(encoding="utf-8")


def render_unit(name: str, *, command: list[str], data_dir: Path) -> str:
    """The unit ``name`` for this installation: its ExecStart and its data directory."""
    text = unit_template(name)
    if name != "copilotd.service":
        return text
    exec_start = "ExecStart=" + " ".join(_systemd_quote(part) for part in [*command, "serve"])
    default_data = Path.home() / ".local" / "share" / "copilotd"
    if data_dir != default_data:
        exec_start += " --data-dir " + _systemd_quote(str(data_dir))
        text = text.replace(
            f"ReadWritePaths={TEMPLATE_DATA_DIR}", f"ReadWritePaths={_systemd_quote(str(data_dir))}"
        )
    if TEMPLATE_EXEC_START not in text:
        raise AssertionError("the unit template lost its ExecStart line")
    return text.replace(TEMPLATE_EXEC_START, exec_start)


def _systemd_quote(word: str) -> str:
    """Quote for systemd's command-line syntax (and escape its % specifiers)."""
    word = word.replace("%", "%%")
    return shlex.quote(word) if any(c.isspace() or c in "\"'\\" for c in word) else word


def default_unit_dir() -> Path:
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "systemd" / "user"


@click.command("install-service")
@click.option(
    "--unit-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where to write the units [default $XDG_CONFIG_HOME/systemd/user].",
)
@click.option("--force", is_flag=True, help="Replace unit files that differ.")
@reports_errors
def install_service_command(unit_dir: Path | None, force: bool) -> None:
    """Write copilotd.service and copilotd.socket for this installation (systemd --user)."""
    unit_dir = unit_dir or default_unit_dir()
    data_dir = resolve_data_dir()
    command = [sys.executable, "-m", "copilotd"]
    units = {name: render_unit(name, command=command, data_dir=data_dir) for name in UNIT_NAMES}
    for name, text in units.items():
        path = unit_dir / name
        if path.exists() and path.read_text(encoding="utf-8") != text and not force:
            raise CliError(f"{path} exists and differs; pass --force to replace it")
    unit_dir.mkdir(parents=True, exist_ok=True)
    # The unit lets the daemon write only there, so it must exist before it starts.
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, text in units.items():
        path = unit_dir / name
        unchanged = path.exists() and path.read_text(encoding="utf-8") == text
        if not unchanged:
            path.write_text(text, encoding="utf-8")
        click.echo(f"{'unchanged' if unchanged else 'wrote'} {path}")
    click.echo(
        "\nNow run:\n"
        "  systemctl --user daemon-reload\n"
        "  systemctl --user enable --now copilotd.socket    # started by the first client\n"
        "or, to keep it running from login on:\n"
        "  systemctl --user enable --now copilotd.service\n"
        "Logs: journalctl --user -u copilotd"
    )
