"""What a test needs from the machine (a server program, a Debian package): when
it is missing, the test fails on CI and is skipped elsewhere, saying why."""

from __future__ import annotations

import os
from typing import NoReturn


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(message: str) -> NoReturn:
    """Fail on CI, skip elsewhere: CI must never pass by quietly testing less."""
    import pytest  # here: the benchmarks use these helpers without pytest

    if on_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
