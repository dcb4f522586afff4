"""What the SDKs would take from copilotd's environment, and the headers that undo it.

The end-to-end proof is in tests/providers/test_own_providers.py
(``test_the_daemons_environment_headers_never_reach_an_own_provider``): a real
daemon, a real HTTP server. These pin down the parts.
"""

from __future__ import annotations

import pytest

from copilotd.providers.environment import (
    OPENAI_CUSTOM_HEADERS,
    OPENAI_HEADER_VARIABLES,
    check_isolated,
    environment_headers,
    isolating_headers,
)

OMIT = object()


def test_environment_headers_as_the_sdks_read_them() -> None:
    environ = {
        OPENAI_CUSTOM_HEADERS: "X-One: 1\n  X-Two :two: parts \nno colon here\n",
        "OPENAI_ORG_ID": "org-1",
        "UNRELATED": "x",
    }
    assert environment_headers(OPENAI_CUSTOM_HEADERS, OPENAI_HEADER_VARIABLES, environ) == {
        "OpenAI-Organization": "org-1",
        "X-One": "1",
        "X-Two": "two: parts",
    }
    assert environment_headers(OPENAI_CUSTOM_HEADERS, OPENAI_HEADER_VARIABLES, {}) == {}


def test_isolating_headers_keep_the_own_ones_and_the_credential() -> None:
    explicit = isolating_headers(
        own={"X-Team": "mine"},
        ambient={"x-team": "theirs", "Authorization": "Bearer theirs", "X-Secret": "s"},
        credential={"Authorization": "Bearer mine"},
        omit=OMIT,
    )
    assert explicit == {"X-Team": "mine", "Authorization": "Bearer mine", "X-Secret": OMIT}


def test_a_header_that_would_still_leak_is_refused() -> None:
    ambient = {"X-Secret": "s", "Authorization": "Bearer same"}
    credential = {"Authorization": "Bearer same"}
    check_isolated({"x-secret": OMIT, "Authorization": "Bearer same"}, ambient, credential, "x")
    with pytest.raises(RuntimeError, match=r"header\(s\) X-Secret from copilotd's environment"):
        check_isolated({"X-SECRET": "s"}, ambient, credential, "x")
