"""ruff and mypy are part of the test suite, so style drift fails CI like any other defect."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_check() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = subprocess.run(
        # One run over everything: a second mypy process would pay its start-up again.
        [sys.executable, "-m", "mypy", "copilotd", "copilot_client", "bench", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


MAX_MODULE_LINES = 600


def test_no_module_outgrows_the_limit() -> None:
    """Small modules, each about one thing (docs/architecture.md); generated stubs aside."""
    too_long = {
        str(path.relative_to(ROOT)): lines
        for folder in ("copilotd", "copilot_client", "tests", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if "proto" not in path.relative_to(ROOT).parts
        and (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert too_long == {}, f"over {MAX_MODULE_LINES} lines: split them by what they hold"
