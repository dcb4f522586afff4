"""The protos pass ``buf lint`` and keep the wire: ``buf breaking`` against the
protos before their latest change (or the last release tag).

buf comes from npm (tools/buf; scripts/test.sh runs ``npm ci`` there).
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from io import BytesIO
from pathlib import Path
from typing import cast

import pytest
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from copilot_client.proto.admin.v1 import admin_pb2
from copilot_client.proto.v1 import copilot_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
BUF = ROOT / "tools" / "buf" / "node_modules" / ".bin" / "buf"


def buf(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    if not BUF.exists():
        pytest.fail(f"{BUF} is missing: run `npm ci` in tools/buf (scripts/test.sh does)")
    return subprocess.run([str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def baseline_ref() -> str:
    """What the protos must stay wire-compatible with.

    The last release tag when there is one; else the first parent of the
    latest commit (along main's first parents, so a merge counts as one
    change) that changed protos/. Comparing with HEAD~1 would check nothing
    whenever the latest commit left the protos alone.
    """
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no earlier protos to compare with")
    tag = subprocess.run(
        ["git", "describe", "--tags", "--abbrev=0"], cwd=ROOT, capture_output=True, text=True
    )
    if tag.returncode == 0:
        return tag.stdout.strip()
    last_change = git("log", "--first-parent", "-1", "--format=%H", "--", "protos")
    return f"{last_change}^1"


def export_protos(ref: str, into: Path) -> Path:
    """protos/ as of ``ref`` (git archive: works in worktrees and old commits)."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref, "protos"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "protos"


def test_lint_is_clean() -> None:
    result = buf("lint", "protos")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_wire_breaking_change_since_the_baseline(tmp_path: Path) -> None:
    ref = baseline_ref()
    against = export_protos(ref, tmp_path)
    result = buf("breaking", "protos", "--against", str(against))
    assert result.returncode == 0, f"against {ref}:\n{result.stdout}{result.stderr}"


def test_breaking_catches_a_renumbered_field(tmp_path: Path) -> None:
    changed = tmp_path / "protos"
    shutil.copytree(PROTOS, changed)
    proto = changed / "copilot_client" / "proto" / "v1" / "copilot.proto"
    text = proto.read_text()
    assert "  string prompt = 2;\n" in text
    proto.write_text(text.replace("  string prompt = 2;\n", "  string prompt = 5;\n", 1))
    result = buf("breaking", str(changed), "--against", str(PROTOS))
    assert result.returncode != 0
    assert "FIELD_NO_DELETE" in result.stdout or 'Previously present field "2"' in result.stdout


def wire_shape(message: Descriptor) -> list[tuple[int, str, int, bool, str]]:
    """What a message's bytes depend on, names of message types left out."""
    return [
        (field.number, field.name, field.type, field.is_repeated, _type_name(field))
        for field in sorted(message.fields, key=lambda field: field.number)
    ]


def _type_name(field: object) -> str:
    # Nested admin types (RetentionPolicy, ImportHeader, ...) exist in both
    # packages; compare them by their own shape, by name elsewhere.
    kind = getattr(field, "message_type", None) or getattr(field, "enum_type", None)
    return "" if kind is None else kind.name


SAME_WIRE = [
    (copilot_pb2.SendMessageRequest, copilot_pb2.SendMessageAndWaitRequest),
    *(
        (getattr(copilot_pb2, name), getattr(admin_pb2, name))
        for name in admin_pb2.DESCRIPTOR.message_types_by_name
    ),
]


@pytest.mark.parametrize(
    ("old", "new"), SAME_WIRE, ids=[new.DESCRIPTOR.name for _, new in SAME_WIRE]
)
def test_renamed_and_deprecated_messages_keep_the_same_wire(
    old: type[Message], new: type[Message]
) -> None:
    assert wire_shape(cast(Descriptor, old.DESCRIPTOR)) == wire_shape(
        cast(Descriptor, new.DESCRIPTOR)
    )


def test_deprecated_admin_methods_take_the_admin_services_shapes() -> None:
    session_service = copilot_pb2.DESCRIPTOR.services_by_name["CopilotService"]
    admin_service = admin_pb2.DESCRIPTOR.services_by_name["CopilotAdminService"]
    for method in admin_service.methods:
        deprecated = session_service.methods_by_name[method.name]
        assert deprecated.GetOptions().deprecated
        assert deprecated.input_type.name == method.input_type.name
        assert deprecated.output_type.name == method.output_type.name
