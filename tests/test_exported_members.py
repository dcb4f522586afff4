"""The public surface of copilot_client: ``__all__`` is complete and exact."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import copilot_client
from copilot_client import _errors

ROOT = Path(__file__).resolve().parent.parent


def test_all_public_names_are_exported() -> None:
    for name in copilot_client.__all__:
        getattr(copilot_client, name)  # loads the lazily exported ones
    public = {
        name
        for name, value in vars(copilot_client).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(copilot_client.__all__) == public | {"__version__"}
    assert len(copilot_client.__all__) == len(set(copilot_client.__all__))
    assert set(dir(copilot_client)) >= set(copilot_client.__all__)


def test_type_checkers_see_what_is_loaded_at_run_time() -> None:
    # The names are loaded on first use; type checkers and IDEs read the
    # TYPE_CHECKING imports instead: both must say the same.
    tree = ast.parse((ROOT / "copilot_client" / "__init__.py").read_text())
    checked = {
        alias.name: "." + (node.module or "")
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 1
        for alias in node.names
    }
    assert checked == copilot_client._EXPORTS
    assert set(checked) == set(copilot_client.__all__) - {"__version__"}


def test_importing_the_package_loads_no_part_of_the_client() -> None:
    # What the daemon and the CLI import (paths, wire, the stubs) goes through
    # copilot_client/__init__: it must not pull the client (grpc.aio, the
    # session machinery) in with it.
    code = (
        "import json, sys, copilot_client, copilot_client.paths, copilot_client.wire; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('copilot_client.'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    # paths raises UntrustedSocketError, so the exceptions come along.
    assert json.loads(result.stdout) == [
        "copilot_client._errors",
        "copilot_client.paths",
        "copilot_client.wire",
    ]


def test_a_name_loads_its_module_and_shows_as_public() -> None:
    code = (
        "import sys; from copilot_client import CopilotClient, SessionConfig; "
        "import copilot_client._errors as e; "
        "print(CopilotClient.__module__, SessionConfig.__module__, "
        "e.DaemonUnavailableError.__module__, 'copilot_client._client' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    # _errors was loaded by _client, not asked for: its classes show as public too.
    assert result.stdout.split() == ["copilot_client"] * 3 + ["True"]
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        copilot_client.NoSuchName  # noqa: B018 (the attribute access is the test)


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
