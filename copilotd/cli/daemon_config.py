"""``copilotd serve``'s one typed config, built from the config file and the flags.

Each table is parsed by the layer that knows its rules (see ``copilotd.config``);
composing them here, in the one layer allowed to import them all, means every
config error is found before the daemon starts, as one ``ConfigError``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from copilot_client.paths import resolve_data_dir, resolve_socket_path
from copilotd.admin.retention import load_retention_policy, parse_duration
from copilotd.api.access import tcp_listener
from copilotd.config import (
    DEFAULT_MAX_TOOL_ROUNDS,
    ConfigError,
    ConfigFile,
    DaemonConfig,
    Limits,
    ToolSettings,
    load_config,
)
from copilotd.providers import load_provider_settings
from copilotd.store.settings import load_store_config


def build_daemon_config(
    *,
    config_path: Path | None,
    socket_path: Path | None,
    data_dir: Path | None,
    limits: Limits,
    max_store: str | None,
    store_dsn: str | None = None,
    listen: str | None,
    token_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    metrics_address: str | None,
    offline_delay: float,
) -> DaemonConfig:
    """Read the config file once and apply the flags over it; raises ``ConfigError``.

    Args:
        config_path: ``--config`` (else ``$COPILOTD_CONFIG``, else the default file).
        socket_path: ``--socket`` (else the default socket).
        data_dir: ``--data-dir`` (else the default data directory).
        limits: ``--max-prompt-bytes`` and ``--subscriber-buffer``.
        max_store: ``--max-store-bytes``, over ``[store] max_size``.
        store_dsn: ``--store-dsn``, over ``[store] dsn`` and ``dsn_env``.
        listen: ``--listen``, over ``[access] listen``.
        token_file: ``--token-file``, over ``[access] token_file``.
        tls_cert: ``--tls-cert``, over ``[access] tls_cert``.
        tls_key: ``--tls-key``, over ``[access] tls_key``.
        metrics_address: ``--metrics``.
        offline_delay: ``--offline-delay``.
    """
    config_file = load_config(config_path)
    return DaemonConfig(
        socket_path=resolve_socket_path(socket_path),
        data_dir=resolve_data_dir(data_dir),
        limits=limits,
        source=config_file.path,
        store=load_store_config(config_file, max_store, store_dsn),
        tcp=tcp_listener(
            config_file, listen=listen, token_file=token_file, tls_cert=tls_cert, tls_key=tls_key
        ),
        providers=load_provider_settings(config_file),
        retention=load_retention_policy(config_file),
        tools=load_tool_settings(config_file),
        metrics_address=metrics_address,
        offline_delay=offline_delay,
    )


def load_tool_settings(config: ConfigFile) -> ToolSettings:
    """Read ``[tools]``; errors name the file, the table and the key."""
    table = config.table("tools", ("max_rounds", "pending_timeout"))
    where = f"{config.where()}: [tools]"
    max_rounds = table.get("max_rounds", DEFAULT_MAX_TOOL_ROUNDS)
    if not isinstance(max_rounds, int) or isinstance(max_rounds, bool) or max_rounds < 1:
        raise ConfigError(f"{where}: max_rounds must be a whole number 1 or more")
    timeout = table.get("pending_timeout")
    if timeout is None:
        return ToolSettings(max_rounds=max_rounds)
    if not isinstance(timeout, str):
        raise ConfigError(f'{where}: pending_timeout must be a string like "10m", not {timeout!r}')
    try:
        duration = parse_duration(timeout)
    except ValueError as error:
        raise ConfigError(f"{where}: pending_timeout: {error}") from None
    if duration <= timedelta(0):
        raise ConfigError(f"{where}: pending_timeout must be longer than 0s")
    return ToolSettings(max_rounds=max_rounds, pending_timeout=duration)
