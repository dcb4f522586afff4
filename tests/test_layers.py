"""The layer order of copilotd (docs/architecture.md), enforced by import-linter.

The contracts live in ``pyproject.toml``. The last test plants a wrong-way
import, type-only at that, in a copy of the tree and checks that the
contracts catch it, so a contract that stopped checking would fail here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first so that grimp reads the packages under ``root``, not
    # the ones the test environment installed.
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_turn_engines_load_without_the_session_service() -> None:
    # The contract reads the source; this checks what a fresh interpreter
    # loads, by whatever path (a package's ``__init__`` included).
    code = (
        "import sys\n"
        "import copilotd.sessions.scheduler, copilotd.sessions.turns\n"
        "print('copilotd.sessions.service' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_contracts_are_kept() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "wrong_import", "contract"),
    [
        # The core reaching up into the API, only for a type annotation.
        (
            "copilotd/sessions/scheduler.py",
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from copilotd.api.servicer import CopilotServicer\n",
            "copilotd's layers point one way BROKEN",
        ),
        # The store reaching into the session core.
        (
            "copilotd/store/committer.py",
            "from copilotd.sessions import fanout\n",
            "copilotd's layers point one way BROKEN",
        ),
        # The daemon reaching into the client's private modules.
        (
            "copilotd/cli/sessions.py",
            "from copilot_client._errors import CopilotError\n",
            "copilotd uses only copilot_client's public modules BROKEN",
        ),
        # The transport-free core (here the error catalog under it) importing grpc.
        (
            "copilotd/errors.py",
            "import grpc\n",
            "the session core and everything under it know no gRPC server BROKEN",
        ),
        # A turn engine reaching back into the session service it serves.
        (
            "copilotd/sessions/turns.py",
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from copilotd.sessions.service import SessionService\n",
            "which know it only as a TurnHost BROKEN",
        ),
        # The shared state depending on an engine it is shared with.
        (
            "copilotd/sessions/state.py",
            "from copilotd.sessions import scheduler\n",
            "which know it only as a TurnHost BROKEN",
        ),
        # The client importing the daemon.
        (
            "copilot_client/_types.py",
            "import copilotd.events\n",
            "the client never imports the daemon BROKEN",
        ),
    ],
)
def test_a_wrong_way_import_breaks_a_contract(
    tmp_path: Path, module: str, wrong_import: str, contract: str
) -> None:
    for package in ("copilotd", "copilot_client"):
        shutil.copytree(
            ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    planted = tmp_path / module
    text = planted.read_text()
    planted.write_text(text + "\n" + wrong_import)
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert contract in result.stdout, result.stdout
