"""Who may talk to the daemon: the private Unix socket, and TCP only when configured.

The Unix socket is the default and needs no credentials: its folder (0700)
and the socket (0600) let only the daemon's own user in. TCP is off unless a
listen address is configured (``--listen HOST:PORT`` or ``[access] listen``),
and then every call on it must carry ``authorization: Bearer <token>``
metadata, compared in constant time. With a certificate and key the TCP port
speaks TLS; without them it is plain text and accepts only loopback peers
(grpc's local credentials enforce that), so a token never crosses a network
in clear. The token comes from a file only its owner can read
(``--token-file`` or ``[access] token_file``) or from ``$COPILOTD_TOKEN``,
never from the command line, where any local user could read it; it is never
logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import ssl
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import grpc

from copilot_client.wire import TOKEN_ENV
from copilotd.api.interceptors import RequestDecoding
from copilotd.config import ConfigError, ConfigFile
from copilotd.config import TcpListener as TcpListener

log = logging.getLogger(__name__)

TABLE: Final = "access"
KEYS: Final = ("listen", "tls_cert", "tls_key", "token_file")
MIN_TOKEN_LENGTH: Final = 16
AUTHORIZATION_KEY: Final = "authorization"
BEARER_PREFIX: Final = "Bearer "
UNAUTHENTICATED_MESSAGE: Final = (
    "copilotd requires a bearer token on TCP: send the metadata "
    '"authorization: Bearer <token>" with the token the daemon was configured with '
    "(copilot_client: CopilotClient(address=..., token=...) or $COPILOTD_TOKEN)"
)

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]


def tcp_listener(
    config_file: ConfigFile,
    *,
    listen: str | None = None,
    token_file: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    environ: Mapping[str, str] = os.environ,
) -> TcpListener | None:
    """The TCP listener the command line and ``[access]`` table ask for, or None.

    Command-line values win over the file's. Raises ``ConfigError`` with what
    to fix when the settings are incomplete or unsafe.
    """
    table = config_file.table(TABLE, KEYS)
    where = f"{config_file.where()} [{TABLE}]"
    listen = listen or _optional_str(table, "listen", where)
    if not listen:
        return None
    host, port = parse_listen_address(listen)
    tls_cert = tls_cert or _optional_path(table, "tls_cert", where)
    tls_key = tls_key or _optional_path(table, "tls_key", where)
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
    if tls_cert is None and not _is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {listen} without TLS: plain TCP is allowed on a loopback "
            "address only (127.0.0.1, ::1, localhost). Give --tls-cert and --tls-key, or "
            "listen on 127.0.0.1"
        )
    token = _read_token(token_file or _optional_path(table, "token_file", where), environ)
    listener = TcpListener(host=host, port=port, token=token, tls_cert=tls_cert, tls_key=tls_key)
    _server_credentials(listener)  # unreadable or mismatched TLS files fail here, at once
    return listener


def parse_listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) to (host, port); port 0 picks a free one."""
    try:
        parts = urlsplit(f"//{text}")
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None:
        raise ConfigError(f"listen address {text!r} is not HOST:PORT (e.g. 127.0.0.1:7777)")
    return host, port


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _optional_str(table: Mapping[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string")
    return value


def _optional_path(table: Mapping[str, Any], key: str, where: str) -> Path | None:
    value = _optional_str(table, key, where)
    return Path(value).expanduser() if value else None


def _read_token(token_file: Path | None, environ: Mapping[str, str]) -> str:
    if token_file is not None:
        try:
            info = token_file.stat()
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigError(
                f"cannot read the token file {token_file}: {error.strerror}"
            ) from None
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise ConfigError(
                f"the token file {token_file} can be read by other users (mode "
                f"{stat.S_IMODE(info.st_mode):o}); run chmod 600 {token_file}"
            )
        source = f"the token file {token_file}"
    else:
        token = environ.get(TOKEN_ENV, "").strip()
        source = f"${TOKEN_ENV}"
        if not token:
            raise ConfigError(
                "listening on TCP needs a bearer token: put one in a file only you can read "
                f"and pass --token-file (or [access] token_file), or set ${TOKEN_ENV}. "
                'For example: python3 -c "import secrets; print(secrets.token_urlsafe(32))"'
            )
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise ConfigError(
            f"the token in {source} must be at least {MIN_TOKEN_LENGTH} characters without "
            "spaces; generate one with secrets.token_urlsafe(32)"
        )
    return token


def _server_credentials(listener: TcpListener) -> grpc.ServerCredentials:
    if listener.tls_cert is None or listener.tls_key is None:
        return grpc.local_server_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    try:
        # The standard library checks that both parse and that they match.
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            listener.tls_cert, listener.tls_key
        )
        cert, key = listener.tls_cert.read_bytes(), listener.tls_key.read_bytes()
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(
            f"cannot use the TLS certificate {listener.tls_cert} with key {listener.tls_key}: "
            f"{error}"
        ) from None
    return grpc.ssl_server_credentials([(key, cert)])


class BearerTokenAuth(grpc.aio.ServerInterceptor):
    """Lets a call through only with the configured bearer token (constant-time compare)."""

    def __init__(self, token: str) -> None:
        self._expected = (BEARER_PREFIX + token).encode("utf-8")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        presented = _authorization(handler_call_details.invocation_metadata)
        if presented is not None and hmac.compare_digest(presented, self._expected):
            return handler
        # Say why, never what: the presented value may be a real token.
        log.warning(
            "refused a TCP call to %s: %s",
            handler_call_details.method,
            "no bearer token" if presented is None else "wrong bearer token",
        )
        if handler is not None and handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(_refuse_stream)
        return grpc.unary_unary_rpc_method_handler(_refuse)


def _authorization(metadata: Sequence[tuple[str, str | bytes]] | None) -> bytes | None:
    for key, value in metadata or ():
        if key == AUTHORIZATION_KEY:
            return value.encode("utf-8") if isinstance(value, str) else value
    return None


async def _refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)


async def _refuse_stream(
    request: Any, context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[None]:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)
    yield None  # pragma: no cover - abort raises


async def start_tcp_server(
    listener: TcpListener,
    register: Callable[[grpc.aio.Server], None],
    options: Sequence[tuple[str, Any]],
) -> grpc.aio.Server:
    """A second server, on TCP, with the same services behind the token check."""
    credentials = _server_credentials(listener)
    server = grpc.aio.server(
        interceptors=[BearerTokenAuth(listener.token), RequestDecoding()], options=options
    )
    register(server)
    try:
        port = server.add_secure_port(listener.address, credentials)
    except RuntimeError as error:  # grpcio raises this when it cannot bind
        raise ConfigError(f"cannot listen on {listener.address}: {error}") from None
    if not port:
        raise ConfigError(f"cannot listen on {listener.address}; is the port taken?")
    await server.start()
    kind = "TLS" if listener.tls_cert else "plain text, loopback peers only"
    log.info(
        "listening on tcp %s (%s; bearer token required)",
        TcpListener(host=listener.host, port=port, token="").address,
        kind,
    )
    return server
