"""The ``copilotd`` command.

Only ``serve`` loads the server (gRPC server, LMDB, provider SDKs, metrics):
it imports them when it runs, so that the client-side subcommands start fast
(``tests/test_cli_sessions.py`` checks what they load). The other
subcommands' modules are imported only when one of them runs, so that a
daemon an auto-starting client waits for does not load them
(``tests/test_import_budget.py``).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from copilot_client.paths import DATA_DIR_ENV, SOCKET_ENV
from copilot_client.wire import TOKEN_ENV
from copilotd import __version__
from copilotd.cli.group import LazyGroup, timeout_option
from copilotd.config import CONFIG_ENV, ConfigError, Limits
from copilotd.limits import DEFAULT_MAX_PROMPT_BYTES
from copilotd.runtime.logs import LEVELS
from copilotd.sessions.fanout import DEFAULT_BUFFER_EVENTS

# A DSN may carry a password: a variable keeps it off the command line (and ps).
STORE_DSN_ENV = "COPILOTD_STORE_DSN"


# Each subcommand but serve -> where it is defined.
SUBCOMMANDS = {
    "status": "copilotd.cli.service:status_command",
    "stop": "copilotd.cli.service:stop_command",
    "install-service": "copilotd.cli.service:install_service_command",
    "sessions": "copilotd.cli.sessions:sessions_group",
    "export": "copilotd.cli.data:export_command",
    "import": "copilotd.cli.data:import_command",
    "backup": "copilotd.cli.data:backup_command",
    "restore": "copilotd.cli.data:restore_command",
    "search-index": "copilotd.cli.data:search_index_group",
}


@click.group(cls=LazyGroup, lazy_subcommands=SUBCOMMANDS)
@click.version_option(__version__, prog_name="copilotd")
@timeout_option
def main(timeout: float | None) -> None:
    """copilotd keeps chat sessions with language models safe across restarts."""


@main.command("serve")
@click.option(
    "--socket",
    "socket_path",
    envvar=SOCKET_ENV,
    type=click.Path(path_type=Path),
    help=f"Unix socket to serve on [env {SOCKET_ENV}; default "
    "$XDG_RUNTIME_DIR/copilotd/copilotd.sock].",
)
@click.option(
    "--data-dir",
    envvar=DATA_DIR_ENV,
    type=click.Path(path_type=Path),
    help=f"Where sessions are stored [env {DATA_DIR_ENV}; default $XDG_DATA_HOME/copilotd].",
)
@click.option(
    "--max-prompt-bytes",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PROMPT_BYTES,
    show_default=True,
    help="Largest prompt accepted, in UTF-8 bytes.",
)
@click.option(
    "--offline-delay",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Seconds the offline model waits before each streamed piece (for demos and tests).",
)
@click.option(
    "--subscriber-buffer",
    type=click.IntRange(min=1),
    default=DEFAULT_BUFFER_EVENTS,
    show_default=True,
    help="Live events buffered per subscriber before a slow one is cut off (it re-attaches).",
)
@click.option(
    "--config",
    "config_path",
    envvar=CONFIG_ENV,
    type=click.Path(path_type=Path),
    help=f"Config file [env {CONFIG_ENV}; default $XDG_CONFIG_HOME/copilotd/config.toml].",
)
@click.option(
    "--max-store-bytes",
    "max_store",
    help="Cap on the store's size, e.g. 512MiB; writes beyond it get RESOURCE_EXHAUSTED "
    "[config [store] max_size; default: no cap].",
)
@click.option(
    "--store-dsn",
    envvar=STORE_DSN_ENV,
    help="Store sessions in PostgreSQL at this connection string, e.g. "
    f"'host=/run/postgresql dbname=copilotd' [env {STORE_DSN_ENV}; config [store] dsn].",
)
@click.option(
    "--listen",
    help="Also serve on TCP HOST:PORT, with a bearer token (plain text on loopback only, "
    "else TLS) [config [access] listen; default: Unix socket only].",
)
@click.option(
    "--token-file",
    type=click.Path(path_type=Path),
    help=f"File holding the bearer token TCP calls must carry [config [access] token_file; "
    f"else env {TOKEN_ENV}].",
)
@click.option("--tls-cert", type=click.Path(path_type=Path), help="TLS certificate (PEM) for TCP.")
@click.option("--tls-key", type=click.Path(path_type=Path), help="TLS private key (PEM) for TCP.")
@click.option(
    "--log-level",
    type=click.Choice(LEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
    help="Least severe level logged.",
)
@click.option("--log-json", is_flag=True, help="Log one JSON object per line (to stderr).")
@click.option(
    "--metrics",
    "metrics_address",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (loopback addresses only).",
)
def serve_command(
    socket_path: Path | None,
    data_dir: Path | None,
    max_prompt_bytes: int,
    offline_delay: float,
    subscriber_buffer: int,
    config_path: Path | None,
    max_store: str | None,
    store_dsn: str | None,
    listen: str | None,
    token_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    log_level: str,
    log_json: bool,
    metrics_address: str | None,
) -> None:
    """Run the daemon in the foreground until SIGTERM or SIGINT.

    Under systemd (Type=notify) it reports readiness and pings the watchdog,
    and it serves the socket systemd passes (socket activation).
    """
    # Only serve needs the server, the store and the providers' settings; the
    # other subcommands are clients and start faster without them.
    from copilotd.cli.daemon_config import build_daemon_config
    from copilotd.runtime.datadir import StartupError
    from copilotd.runtime.logs import configure_logging
    from copilotd.runtime.server import serve

    configure_logging(log_level, json=log_json)
    try:
        config = build_daemon_config(
            config_path=config_path,
            socket_path=socket_path,
            data_dir=data_dir,
            limits=Limits(max_prompt_bytes=max_prompt_bytes, subscriber_buffer=subscriber_buffer),
            max_store=max_store,
            store_dsn=store_dsn,
            listen=listen,
            token_file=token_file,
            tls_cert=tls_cert,
            tls_key=tls_key,
            metrics_address=metrics_address,
            offline_delay=offline_delay,
        )
    except ConfigError as error:
        click.echo(f"copilotd: cannot start: {error}", err=True)
        sys.exit(1)
    try:
        asyncio.run(serve(config))
    except StartupError as error:
        click.echo(f"copilotd: cannot start: {error}", err=True)
        sys.exit(1)
