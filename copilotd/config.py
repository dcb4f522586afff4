"""The daemon's config: the file it reads, and the one typed value built from it.

The file is TOML, one table per concern: ``$XDG_CONFIG_HOME/copilotd/config.toml``
(default ``~/.config/copilotd``), ``$COPILOTD_CONFIG`` or ``--config PATH``. A
missing default file means "all defaults"; a missing file named explicitly is
an error. A table or key the daemon does not know is refused (a typo must
never silently do nothing), with the known ones and the closest match.

``copilotd serve`` reads the file once and builds one ``DaemonConfig`` from it
and the command-line flags; ``serve()`` receives only that. This module is a
leaf (it imports no other layer), so it holds the typed values and the file
loader, while each table's rules stay with the layer that knows them: sizes
and backends in ``store.settings``, TCP access (token files, TLS) in
``api.access``, providers and models (pydantic tables, secrets from the
environment) in ``providers.settings``, durations in ``admin.retention``. The
CLI composes those parsers (``cli.daemon_config``), so every config error
surfaces before the daemon starts, as one ``ConfigError``.
"""

from __future__ import annotations

import difflib
import os
import random
import stat
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Protocol

CONFIG_ENV: Final = "COPILOTD_CONFIG"
# Every top-level table the daemon reads; anything else is refused.
TABLES: Final = ("access", "models", "providers", "retention", "store", "tools")
DEFAULT_TIMEOUT: Final = 600.0
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
DEFAULT_SWEEP_INTERVAL: Final = timedelta(hours=1)


class ConfigError(Exception):
    """The config file is unreadable or a setting is invalid; the message says where."""


def default_config_path() -> Path:
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home).expanduser() / "copilotd" / "config.toml"


def unknown_name_error(where: str, kind: str, name: str, known: Collection[str]) -> ConfigError:
    """A refusal of ``name`` that lists the ``known`` ones and suggests the closest."""
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listing = ", ".join(sorted(known)) or "none"
    return ConfigError(f"{where}: unknown {kind} {name!r}{hint}; the known ones: {listing}")


@dataclass(frozen=True)
class ConfigFile:
    """The parsed file; ``path`` is None when no file was read."""

    path: Path | None = None
    tables: dict[str, Any] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        """The table ``[name]`` (empty when absent)."""
        value = self.tables.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.where()}: [{name}] must be a table")
        return value

    def table(self, name: str, keys: Collection[str]) -> dict[str, Any]:
        """The table ``[name]``, refusing any key not in ``keys``."""
        values = self.section(name)
        for key in values:
            if key not in keys:
                raise unknown_name_error(f"{self.where()}: [{name}]", "key", key, keys)
        return values

    def where(self) -> str:
        return str(self.path) if self.path else "config"


def load_config(explicit: Path | None = None) -> ConfigFile:
    """Read ``explicit``, else ``$COPILOTD_CONFIG``, else the default path if it exists.

    An unknown top-level table is refused here, whoever reads the file.
    """
    named = explicit or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    path = named or default_config_path()
    if not path.exists():
        if named is not None:
            raise ConfigError(f"config file {path} does not exist")
        return ConfigFile()
    try:
        with path.open("rb") as handle:
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            tables = tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    for name in tables:
        if name not in TABLES:
            raise unknown_name_error(str(path), "table", name, TABLES)
    _refuse_readable_secrets(path, mode, tables)
    return ConfigFile(path, tables)


INLINE_SECRET_KEYS: Final = ("api_key", "bearer_token")


def _refuse_readable_secrets(path: Path, mode: int, tables: dict[str, Any]) -> None:
    """Refuse a file others may read that holds a secret, as the token file is refused."""
    if not mode & 0o077:
        return
    providers = tables.get("providers")
    for name, table in providers.items() if isinstance(providers, dict) else ():
        for key in INLINE_SECRET_KEYS:
            if isinstance(table, dict) and key in table:
                raise ConfigError(
                    f"{path} holds an inline {key} ([providers.{name}]) and can be read by "
                    f"other users (mode {mode:o}); run chmod 600 {path}, or name an "
                    f"environment variable with {key}_env instead"
                )


# -- [store] ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    """Where and how sessions are stored (``[store]``, ``--max-store-bytes``)."""

    backend: str = "lmdb"
    """The storage backend, opened through ``store.open_store``."""
    max_size: int | None = None
    """Cap on the store's size in bytes; writes beyond it are refused (None: no cap)."""
    dsn: str | None = field(default=None, repr=False)
    """The PostgreSQL connection string (backend "postgresql"). It may hold a
    password: left out of ``repr``, and shown only through ``describe_dsn``."""

    lease_seconds: float = 30.0
    """PostgreSQL: how long a daemon's lease on a session's turn lasts unless
    renewed (every third of it): how soon another daemon takes over the turns
    of a daemon that died."""

    def backend_options(self, lease_owner: str = "") -> dict[str, Any]:
        """The keyword arguments ``store.open_store`` passes to this backend.

        ``lease_owner``: who this daemon is to the other daemons on a shared store.
        """
        if self.backend == "postgresql":
            return {
                "dsn": self.dsn,
                "lease_owner": lease_owner,
                "lease_seconds": self.lease_seconds,
            }
        return {"max_map_size": self.max_size}


# -- [access] -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TcpListener:
    """A configured TCP port: where, the token it requires, and TLS if any."""

    host: str
    """The address to listen on; plain text is allowed on loopback only."""
    port: int
    """The port; 0 picks a free one."""
    token: str = field(repr=False)
    """The bearer token every TCP call must carry; never logged."""
    tls_cert: Path | None = None
    """TLS certificate (PEM); with ``tls_key``, the port speaks TLS."""
    tls_key: Path | None = None
    """TLS private key (PEM)."""

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# -- [providers.*] and [models] -------------------------------------------------------------


class RetryableError(Protocol):
    """What a retry decision needs to know of a failed request."""

    @property
    def retryable(self) -> bool: ...

    @property
    def retry_after(self) -> float | None: ...


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often and how long to wait before trying a failed request again."""

    max_retries: int = 3
    """Retries after the first attempt (0: none)."""
    initial_delay: float = 0.5
    """The first backoff, in seconds; doubled on every retry."""
    max_delay: float = 8.0
    """Cap on a backoff, in seconds."""
    max_retry_after: float = 60.0
    """The longest ``Retry-After`` honoured; a provider that asks for a longer
    wait gets no retry (the error is reported now)."""

    def backoff(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        """The wait before retry number ``retry`` (1, 2, …): exponential, with jitter.

        A random point in the upper half of ``min(max_delay, initial_delay *
        2 ** (retry - 1))``, so that clients failing together spread out.
        """
        ceiling = min(self.max_delay, self.initial_delay * 2.0 ** (retry - 1))
        return ceiling * (0.5 + 0.5 * rng())

    def delay(self, error: RetryableError, retry: int) -> float | None:
        """Seconds to wait before retry number ``retry``, or None to give up."""
        if not error.retryable or retry > self.max_retries:
            return None
        backoff = self.backoff(retry)
        if error.retry_after is None:
            return backoff
        if error.retry_after > self.max_retry_after:
            return None
        return max(error.retry_after, backoff)


@dataclass(frozen=True, kw_only=True)
class Connection:
    """How to reach one provider: what its client is built from."""

    name: str
    """The config table's name, or "session <id>" for a session's own."""
    type: str
    """openai, azure, anthropic or offline."""
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    bearer_token: str | None = field(default=None, repr=False)
    missing_secret: str = ""
    """Why the configured secret is unavailable (e.g. an unset environment
    variable); calls then fail with that message."""
    api_version: str = ""
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    """Seconds to wait for the next bytes of an answer (and to send, or for a
    pooled connection): the SDKs' read timeout, not a cap on the whole answer."""
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    stream_usage: bool = True
    """Whether to ask an OpenAI-compatible server for token usage in the stream."""
    max_tokens_param: str = "max_completion_tokens"
    use_environment: bool = True
    """Whether the SDK may add what copilotd's environment says
    (``OPENAI_CUSTOM_HEADERS``, ``OPENAI_ORG_ID``, …): yes for the configured
    providers, no for a session's own (``providers/environment.py``)."""


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """A model a configured provider offers."""

    name: str
    """The name sessions ask for."""
    provider: str
    """The ``[providers.NAME]`` table that serves it."""
    wire_model: str
    """The name sent to the provider."""
    context_window: int | None = None
    max_output_tokens: int | None = None
    max_prompt_tokens: int | None = None


@dataclass(frozen=True, kw_only=True)
class ProviderSettings:
    """Everything the ``[providers.*]`` and ``[models]`` tables say; empty: offline only."""

    connections: dict[str, Connection] = field(default_factory=dict)
    """The configured providers by table name."""
    models: dict[str, ModelSettings] = field(default_factory=dict)
    """The models they list, by the name sessions ask for."""
    default_model: str | None = None
    """The model of sessions created without one."""
    fallback: ModelSettings | None = None
    """Serves the model names no provider lists, with these settings."""
    use_configured_when_secret_missing: bool = False
    """Whether a session whose own provider's secret is gone (after a restart)
    is answered by the configured provider of its model instead of failing."""

    def model(self, name: str) -> ModelSettings | None:
        """The settings of model ``name``, or None when no provider serves it."""
        listed = self.models.get(name)
        if listed is not None or self.fallback is None:
            return listed
        return replace(self.fallback, name=name, wire_model=name)


# -- [retention] --------------------------------------------------------------------------


def format_duration(value: timedelta) -> str:
    """``value`` as config text, in days at most ("30d", not "4w2d")."""
    seconds = int(value.total_seconds())
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


@dataclass(frozen=True)
class RetentionRule:
    """Selects sessions older than ``max_age`` and beyond the ``max_sessions`` newest.

    A limit that is None selects every session; at least one must be set.
    """

    max_age: timedelta | None = None
    """Selects sessions inactive for longer than this."""
    max_sessions: int | None = None
    """Spares this many of the most recently active sessions."""

    def __post_init__(self) -> None:
        if self.max_age is None and self.max_sessions is None:
            raise ValueError("a retention rule needs max_age and/or max_sessions")
        if self.max_sessions is not None and self.max_sessions < 0:
            raise ValueError(f"max_sessions must be 0 or more, not {self.max_sessions}")
        if self.max_age is not None and self.max_age <= timedelta(0):
            raise ValueError("max_age must be longer than 0s")

    def describe(self) -> str:
        parts = []
        if self.max_age is not None:
            parts.append(f"inactive for more than {format_duration(self.max_age)}")
        if self.max_sessions is not None:
            parts.append(f"beyond the {self.max_sessions} most recently active")
        return " and ".join(parts)


@dataclass(frozen=True)
class RetentionPolicy:
    """The configured rule (None: retention is off) and how often to sweep."""

    rule: RetentionRule | None = None
    """What a sweep deletes; None: the daemon never sweeps."""
    sweep_interval: timedelta = DEFAULT_SWEEP_INTERVAL
    """How often the daemon sweeps."""


# -- [tools] ----------------------------------------------------------------------------------

DEFAULT_MAX_TOOL_ROUNDS: Final = 16


@dataclass(frozen=True, kw_only=True)
class ToolSettings:
    """``[tools]``: how long a turn may go on calling clients' tools."""

    max_rounds: int = DEFAULT_MAX_TOOL_ROUNDS
    """Model calls per turn (each round of tool calls is one); past it the turn fails."""
    pending_timeout: timedelta | None = None
    """How long a tool call waits for a client's result before it is closed
    with a synthetic one (None: it waits until answered, across restarts)."""


# -- the whole --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Bounds on what callers may send and buffer (command-line flags)."""

    max_prompt_bytes: int
    """Largest accepted prompt, in UTF-8 bytes (``--max-prompt-bytes``)."""
    subscriber_buffer: int
    """Live events buffered per subscriber before it is cut off (it then
    re-attaches from its cursor; ``--subscriber-buffer``)."""


@dataclass(frozen=True, kw_only=True)
class DaemonConfig:
    """Everything ``serve()`` needs, built once from the config file and the flags."""

    socket_path: Path
    """The Unix socket to serve on (under socket activation, systemd's)."""
    data_dir: Path
    """Where the store and the data-dir lock live."""
    limits: Limits
    """Prompt size and subscriber buffer bounds."""
    source: Path | None = None
    """The config file read (None: none was, all defaults)."""
    store: StoreConfig = field(default_factory=StoreConfig)
    """``[store]``: backend and size cap."""
    tcp: TcpListener | None = None
    """``[access]``: the TCP port to serve on as well (None: Unix socket only)."""
    providers: ProviderSettings = field(default_factory=ProviderSettings)
    """``[providers.*]`` and ``[models]``: who answers which model."""
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    """``[retention]``: which sessions the daemon deletes, and how often it looks."""
    tools: ToolSettings = field(default_factory=ToolSettings)
    """``[tools]``: rounds per turn and the pending tool call timeout."""
    metrics_address: str | None = None
    """``HOST:PORT`` (loopback) of the Prometheus endpoint (None: no metrics)."""
    offline_delay: float = 0.0
    """Seconds the offline model waits before each streamed piece (demos, tests)."""
    shutdown_grace: float = 5.0
    """Seconds in-flight calls get to finish at shutdown."""
