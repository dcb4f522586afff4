"""The ``copilotd`` command group itself: one-line errors, lazily loaded subcommands, --timeout.

Kept apart from ``common`` (which the client-side subcommands share) so that
``copilotd serve`` loads neither the client nor those subcommands: an
auto-starting client waits for every import of the daemon it starts.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final, NoReturn, ParamSpec, TypeVar

import click

from copilot_client.wire import DEFAULT_CALL_TIMEOUT

P = ParamSpec("P")
T = TypeVar("T")

TIMEOUT_ENV: Final = "COPILOTD_TIMEOUT"


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"copilotd: {message}", err=True)
    sys.exit(code)


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


class LazyGroup(OneLineErrors):
    """A group whose subcommands' modules are imported only when one of them runs
    (or ``--help`` lists them): ``copilotd serve`` does not wait for the client
    commands' imports, nor they for one another's (click's documented pattern).

    Args:
        lazy_subcommands: Each subcommand's name -> ``"module:attribute"``.
    """

    def __init__(self, *args: Any, lazy_subcommands: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = lazy_subcommands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_subcommands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = self.lazy_subcommands.get(cmd_name)
        if where is None:
            return super().get_command(ctx, cmd_name)
        module, _, attribute = where.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command) or command.name != cmd_name:
            raise TypeError(f"{where} is not the click command {cmd_name!r}")
        return command


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
