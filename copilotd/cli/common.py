"""What the ``copilotd`` subcommands share: the daemon connection, errors, progress, formats.

Session commands talk to the running daemon over its gRPC API (the same one
every client uses), so they work while it serves. Errors print one line,
``copilotd: <what happened and what to do>``, and exit 1.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, NoReturn, ParamSpec, Protocol, TypeVar

import click
from google.protobuf.timestamp_pb2 import Timestamp

from copilot_client import CopilotError, DaemonUnavailableError
from copilot_client.paths import SOCKET_ENV, resolve_socket_path
from copilot_client.proto.admin.v1 import admin_pb2_grpc
from copilot_client.proto.v1 import copilot_pb2, copilot_pb2_grpc
from copilot_client.service import (
    CALL_TIMEOUT,
    DEFAULT_CALL_TIMEOUT,
    ServiceClient,
    UseCallTimeout,
)
from copilotd.admin.retention import DURATION_HELP, parse_duration

P = ParamSpec("P")
T = TypeVar("T")

TIMEOUT_ENV: Final = "COPILOTD_TIMEOUT"


class CliError(Exception):
    """A failure the command reports in one line (the message) before exiting 1."""


# The daemon's messages are written for API callers and name RPCs; on the
# command line, name the commands that do the same.
_CLI_WORDS: Final = {
    "ListSessions": "`copilotd sessions list`",
    "CreateSession": "a client (create_session) or `copilotd import`",
    "ListEvents": "`copilotd sessions show`",
    "DeleteSession": "`copilotd sessions delete`",
    "PruneSessions": "`copilotd sessions prune`",
    "ImportSession": "`copilotd import`",
    "BackupStore": "`copilotd backup`",
    "GetDaemonStatus": "`copilotd status`",
}
_RPC_NAME: Final = re.compile(r"\b(" + "|".join(_CLI_WORDS) + r")\b")


def in_cli_words(message: str) -> str:
    """``message`` with the RPC names it mentions replaced by the matching commands."""
    return _RPC_NAME.sub(lambda found: _CLI_WORDS[found[1]], message)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"copilotd: {message}", err=True)
    sys.exit(code)


def reports_errors(command: Callable[P, T]) -> Callable[P, T]:
    """Turn the errors a command can meet into one line on stderr and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return command(*args, **kwargs)
        except (CliError, CopilotError) as error:
            fail(in_cli_words(str(error)))
        except BrokenPipeError:  # the reader went away (`| head`): nothing left to say
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise click.exceptions.Exit(1) from None
        except OSError as error:
            where = f" ({error.filename})" if error.filename else ""
            fail(f"{error.strerror or error}{where}")
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper


_NO_ARGS_IS_HELP: Final[type[click.UsageError]] = getattr(
    click.exceptions, "NoArgsIsHelpError", type("_Never", (click.UsageError,), {})
)


class OneLineErrors(click.Group):
    """A group whose usage errors are one line too: ``copilotd: <problem> (see … --help)``."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except _NO_ARGS_IS_HELP as error:  # plain `copilotd`: the help, as click shows it
            click.echo(error.format_message(), err=True)
            sys.exit(error.exit_code)
        except click.UsageError as error:
            hint = f" (see `{error.ctx.command_path} --help`)" if error.ctx else ""
            fail(f"{error.format_message()}{hint}", error.exit_code)
        except click.ClickException as error:
            fail(error.format_message(), error.exit_code)
        except click.Abort:
            fail("aborted", 1)
        except click.exceptions.Exit as exit_:
            sys.exit(exit_.exit_code)
        sys.exit(result if isinstance(result, int) else 0)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def socket_option(command: Callable[P, T]) -> Callable[P, T]:
    return click.option(
        "--socket",
        "socket_path",
        envvar=SOCKET_ENV,
        type=click.Path(path_type=Path),
        help=f"The daemon's socket [env {SOCKET_ENV}; default "
        "$XDG_RUNTIME_DIR/copilotd/copilotd.sock].",
    )(command)


class Daemon:
    """A connection to the running daemon: the stubs, and calls whose errors are mapped.

    ``stub`` is the session service; ``admin`` the administration service
    (status, pin, prune, import, backup), never the session service's
    deprecated copies of those methods.
    """

    def __init__(self, transport: ServiceClient) -> None:
        self.transport = transport
        self.stub: copilot_pb2_grpc.CopilotServiceAsyncStub = transport.stub
        self.admin: admin_pb2_grpc.CopilotAdminServiceAsyncStub = transport.admin_stub

    async def call(
        self, rpc: Any, request: Any, *, deadline: float | UseCallTimeout | None = CALL_TIMEOUT
    ) -> Any:
        return await self.transport.call(rpc, request, deadline=deadline)

    @asynccontextmanager
    async def mapped_errors(self) -> AsyncIterator[None]:
        """For streaming calls: the same error mapping ``call`` applies."""
        with self.transport.mapped_errors():
            yield


def call_timeout(default: float = DEFAULT_CALL_TIMEOUT) -> float:
    """Seconds each call to the daemon may take: ``copilotd --timeout``, else ``default``."""
    context = click.get_current_context(silent=True)
    chosen = context.find_root().params.get("timeout") if context is not None else None
    return default if chosen is None else float(chosen)


def timeout_option(group: Callable[P, T]) -> Callable[P, T]:
    return click.option(
        "--timeout",
        envvar=TIMEOUT_ENV,
        type=click.FloatRange(min=0, min_open=True),
        metavar="SECONDS",
        help=f"Seconds each call to the daemon may take before the command gives up "
        f"[env {TIMEOUT_ENV}; default {DEFAULT_CALL_TIMEOUT:g}, 5 for `status`, "
        "300 for `sessions compact`].",
    )(group)


@asynccontextmanager
async def connect(
    socket_path: Path | None,
    *,
    timeout: float | None = None,  # noqa: ASYNC109 (gRPC deadline)
) -> AsyncIterator[Daemon]:
    """Connect to the daemon that serves ``socket_path``; never starts one.

    Every call gets a deadline: ``timeout``, else :func:`call_timeout`.

    Raises ``CliError`` (naming the socket and how to start the daemon) when
    nothing answers, with the ``DaemonUnavailableError`` (``DaemonTimeoutError``
    for a daemon that accepts the connection but does not answer) as its cause.
    """
    transport = ServiceClient(
        resolve_socket_path(socket_path),
        call_timeout=call_timeout() if timeout is None else timeout,
    )
    transport.open()
    try:
        try:
            await transport.call(transport.stub.Ping, copilot_pb2.PingRequest())
        except DaemonUnavailableError as error:
            # "copilotd: the daemon is not reachable at …", not "copilotd: copilotd is …"
            raise CliError(str(error).replace("copilotd is", "the daemon is", 1)) from error
        yield Daemon(transport)
    finally:
        await transport.close()


class DurationType(click.ParamType):  # type: ignore[type-arg]
    """``30d``, ``12h``, ``90m``, ``1d12h`` … as a ``timedelta``."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return value
        try:
            duration = parse_duration(str(value))
        except ValueError:
            self.fail(f"{value!r} is not {DURATION_HELP}", param, ctx)
        if duration <= timedelta(0):
            self.fail("the duration must be longer than 0s", param, ctx)
        return duration


DURATION = DurationType()


class Progress(Protocol):
    def update(self, n_steps: int) -> None: ...


class _Silent:
    def update(self, n_steps: int) -> None:
        pass


@contextmanager
def progress(length: int, label: str) -> Iterator[Progress]:
    """A progress bar on stderr when it is a terminal; nothing at all when piped."""
    if not sys.stderr.isatty():
        yield _Silent()
        return
    with click.progressbar(length=max(length, 1), label=label, file=sys.stderr) as bar:
        yield bar


def to_datetime(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def local_time(stamp: Timestamp) -> str:
    return to_datetime(stamp).astimezone().strftime("%Y-%m-%d %H:%M")


def age(stamp: Timestamp, now: datetime | None = None) -> str:
    """How long ago, shortly: ``45s``, ``12m``, ``5h``, ``3d``."""
    seconds = int(((now or datetime.now(UTC)) - to_datetime(stamp)).total_seconds())
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
