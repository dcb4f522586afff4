"""The public surface of copilot_client: ``__all__`` is complete and exact."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import types
from pathlib import Path

import copilot_client
from copilot_client import _errors

ROOT = Path(__file__).resolve().parent.parent


def test_all_public_names_are_exported() -> None:
    public = {
        name
        for name, value in vars(copilot_client).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(copilot_client.__all__) == public | {"__version__"}
    assert len(copilot_client.__all__) == len(set(copilot_client.__all__))


def test_every_exported_name_exists() -> None:
    for name in copilot_client.__all__:
        assert getattr(copilot_client, name) is not None, name


def test_every_exception_is_exported() -> None:
    exceptions = {
        name
        for name, value in vars(_errors).items()
        if inspect.isclass(value) and issubclass(value, copilot_client.CopilotError)
    }
    assert exceptions <= set(copilot_client.__all__)
    for name in exceptions:
        assert getattr(copilot_client, name) is getattr(_errors, name)


def test_version() -> None:
    assert isinstance(copilot_client.__version__, str) and copilot_client.__version__


def test_client_imports_nothing_from_the_daemon() -> None:
    code = (
        "import json, sys, copilot_client; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    top_level = set(json.loads(result.stdout))
    assert "copilot_client" in top_level
    assert "copilotd" not in top_level
    # The daemon's dependencies, model provider SDKs included.
    assert not top_level & {"lmdb", "click", "openai", "anthropic", "pydantic", "httpx2"}
