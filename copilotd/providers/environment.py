"""Keeping the daemon's environment away from a session's own provider.

The provider SDKs fill in from environment variables what their constructors
are not given. Most of it the daemon always gives (credentials, base URL,
API version), but some it cannot turn off that way: ``OPENAI_CUSTOM_HEADERS``
and ``ANTHROPIC_CUSTOM_HEADERS`` add headers to every request (an
``Authorization`` among them, if the variable says so), and ``OPENAI_ORG_ID``
and ``OPENAI_PROJECT_ID`` add ``OpenAI-Organization`` and ``OpenAI-Project``.

That is what the owner of the daemon wants for the providers of its config
file. A session's own provider (bring your own key) talks to a server the
session's owner chose, which must not receive the daemon's headers, tokens
or organization. So its client is built with explicit values for each such
header: removed (the SDKs' ``Omit``), or, for the header the session's own
credential goes in, that credential; and then checked, so that an SDK that
reads its environment differently fails the turn rather than leak.

The machine's network setup (``HTTPS_PROXY``, ``SSL_CERT_FILE``, …) is not
sent to any server and applies to every provider as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Final, Protocol, TypeVar

OPENAI_CUSTOM_HEADERS: Final = "OPENAI_CUSTOM_HEADERS"
ANTHROPIC_CUSTOM_HEADERS: Final = "ANTHROPIC_CUSTOM_HEADERS"
# Variables the openai SDK turns into one header each.
OPENAI_HEADER_VARIABLES: Final = {
    "OPENAI_ORG_ID": "OpenAI-Organization",
    "OPENAI_PROJECT_ID": "OpenAI-Project",
}

Omitted = TypeVar("Omitted")


class SdkClient(Protocol):
    """What the openai and anthropic clients say about the headers they send."""

    @property
    def auth_headers(self) -> Mapping[str, str]: ...

    @property
    def default_headers(self) -> Mapping[str, object]: ...


Client = TypeVar("Client", bound=SdkClient)


def isolated_client(
    build: Callable[[Mapping[str, object]], Client],
    own: Mapping[str, str],
    ambient: Mapping[str, str],
    omit: object,
    sdk: str,
) -> Client:
    """A client, built by ``build(headers)``, that sends none of ``ambient``.

    Args:
        build: makes the SDK client with these default headers.
        own: the headers the provider is configured with.
        ambient: what the environment adds (``environment_headers``).
        omit: the SDK's marker for "send no such header".
        sdk: the SDK's name, for the error.

    Raises:
        RuntimeError: the SDK would still send some of ``ambient``.
    """
    client = build(own)
    if not ambient:
        return client
    credential = client.auth_headers
    client = build(isolating_headers(own, ambient, credential, omit))
    check_isolated(client.default_headers, ambient, credential, sdk)
    return client


def environment_headers(
    custom_headers_variable: str,
    header_variables: Mapping[str, str] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> dict[str, str]:
    """The headers an SDK adds from ``environ``, name to value.

    ``custom_headers_variable`` holds ``Name: value`` lines (the SDKs' format);
    ``header_variables`` maps a variable to the header it becomes.
    """
    headers = {
        header: environ[variable]
        for variable, header in (header_variables or {}).items()
        if variable in environ
    }
    for line in environ.get(custom_headers_variable, "").split("\n"):
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip()] = value.strip()
    return headers


def isolating_headers(
    own: Mapping[str, str],
    ambient: Mapping[str, str],
    credential: Mapping[str, str],
    omit: Omitted,
) -> dict[str, str | Omitted]:
    """Explicit headers that leave none of ``ambient`` in a request.

    Args:
        own: the headers the provider is configured with; they stay.
        ambient: what the environment would add (``environment_headers``).
        credential: the headers the SDK sends the provider's own credential in
            (its ``auth_headers``): an ambient header of that name gets it.
        omit: the SDK's marker for "send no such header".
    """
    explicit: dict[str, str | Omitted] = dict(own)
    kept = {name.lower() for name in own}
    credential_by_name = {name.lower(): value for name, value in credential.items()}
    for name in ambient:
        if name.lower() not in kept:
            explicit[name] = credential_by_name.get(name.lower(), omit)
    return explicit


def check_isolated(
    sent: Mapping[str, object],
    ambient: Mapping[str, str],
    credential: Mapping[str, str],
    sdk: str,
) -> None:
    """Raise ``RuntimeError`` if ``sent`` (a client's default headers) still carries
    a value from the environment that is not the provider's own credential."""
    sent_by_name = {name.lower(): value for name, value in sent.items()}
    own_values = set(credential.values())
    leaking = sorted(
        name
        for name, value in ambient.items()
        if sent_by_name.get(name.lower()) == value and value not in own_values
    )
    if leaking:
        raise RuntimeError(
            f"this version of the {sdk} SDK would send the header(s) {', '.join(leaking)} "
            "from copilotd's environment to a session's own provider; copilotd refuses "
            "to: unset them in copilotd's environment or install the SDK version "
            "copilotd is tested with"
        )
