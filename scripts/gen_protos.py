"""Regenerate the Python stubs from protos/ (the one way they are made).

Usage: python scripts/gen_protos.py [OUTPUT_ROOT]

Writes ``*_pb2.py``, ``*_pb2.pyi``, ``*_pb2_grpc.py`` and ``*_pb2_grpc.pyi``
next to the packages (``copilot_client/proto/v1``, ``copilotd/proto/v1``).
``tests/test_proto_sync.py`` runs this into a temporary folder and fails when
the committed stubs differ.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(output_root: Path) -> list[Path]:
    """Generate stubs for every proto under protos/ into ``output_root``.

    Returns the generated files, relative to ``output_root``.
    """
    output_root.mkdir(parents=True, exist_ok=True)
    plugin_dir = Path(sys.executable).parent
    if shutil.which("protoc-gen-mypy", path=str(plugin_dir)) is None:
        raise SystemExit("protoc-gen-mypy not found: pip install -e '.[dev]' first")
    well_known = Path(protoc.__file__).parent / "_proto"
    sources = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={output_root}",
        f"--grpc_python_out={output_root}",
        f"--mypy_out={output_root}",
        f"--mypy_grpc_out={output_root}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = []
    for source in sources:
        stem = source.removesuffix(".proto")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
            generated.append(Path(stem + suffix))
    return generated


def main() -> None:
    output_root = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT
    for path in generate(output_root):
        print(path)


if __name__ == "__main__":
    main()
