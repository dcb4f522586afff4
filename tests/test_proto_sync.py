"""The committed stubs are exactly what scripts/gen_protos.py makes from protos/."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_protos"] = module
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_protos(tmp_path: Path) -> None:
    generator = load_generator()
    generated = generator.generate(tmp_path)
    assert generated, "no .proto files found"
    drifted = [
        str(path)
        for path in generated
        if (tmp_path / path).read_bytes() != (ROOT / path).read_bytes()
    ]
    assert not drifted, f"stubs out of date, run python scripts/gen_protos.py: {drifted}"


def test_no_stale_stubs_without_a_proto(tmp_path: Path) -> None:
    generated = {str(p) for p in load_generator().generate(tmp_path)}
    committed = {
        str(path.relative_to(ROOT))
        for package in ("copilot_client", "copilotd")
        for path in (ROOT / package / "proto").rglob("*_pb2*.py*")
        if path.suffix in (".py", ".pyi")  # not __pycache__'s .pyc
    }
    assert committed == generated
