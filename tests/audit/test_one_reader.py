"""One session reader: the session's file names and the reading of its log live in airlock.audit.

Archive layout, fetch, search, show, verify, the CI commands and the broker's witness take the
names (``EVENTS_FILE``, ``MANIFEST_FILE``, ``ARCHIVED_EVENTS_FILE``) and the parsing
(``iter_events``, ``first_event``, ``open_log``, ``require_manifest``, ``load_manifest``,
``find_logs``) from :mod:`airlock.audit.reader`. A second copy of a file name, or a module outside
audit that opens the gzip form itself, is how two readers drift apart: this test refuses both.
"""

from __future__ import annotations

import ast
import gzip
import json
from pathlib import Path

import pytest

from airlock.audit import SessionWriter
from airlock.audit.reader import (
    ARCHIVED_EVENTS_FILE,
    find_logs,
    first_event,
    iter_events,
    open_log,
    pack_log,
)

PACKAGE = Path(__file__).resolve().parents[2] / "core" / "airlock"
NAMES = ("events.jsonl", "events\\.jsonl", "manifest.json")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            found += [f"line {node.lineno}: {name!r}" for name in NAMES if name in node.value]
        elif isinstance(node, ast.Import | ast.ImportFrom):
            modules = (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            )
            if "gzip" in modules:
                found.append(f"line {node.lineno}: imports gzip (use open_log / pack_log)")
    return found


def test_session_file_names_and_gzip_live_only_in_the_audit_layer() -> None:
    offences = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("audit/"):
            continue
        if found := _offences(path):
            offences[rel] = found
    assert offences == {}


def test_one_describer_lives_in_audit() -> None:
    """Views describe events through airlock.audit.describe; no module elsewhere defines its
    own module-level ``describe`` (archive/describe.py was a second one)."""
    others = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        if not rel.startswith("audit/") and {"describe", "describe_event"} & names:
            others.append(rel)
    assert others == []


def test_the_pin_sees_an_offence(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('"""Reads events.jsonl."""\nimport gzip\nLOG = "x/events.jsonl"\n')
    assert _offences(sample) == [
        "line 2: imports gzip (use open_log / pack_log)",
        "line 3: 'events.jsonl'",
    ]


def test_the_reader_reads_both_forms_of_a_log(tmp_path: Path) -> None:
    writer = SessionWriter.create(tmp_path / "sessions")
    writer.append("session.start", {"identity": {"platform": "local"}})
    writer.append("output", {"stream": "stdout", "text": "hi\n"})
    writer.close()
    packed = tmp_path / ARCHIVED_EVENTS_FILE
    pack_log(writer.path / "events.jsonl", packed)
    plain = list(iter_events(writer.path))
    assert list(iter_events(packed)) == plain and len(plain) == 2
    assert first_event(packed) == first_event(writer.path) == plain[0]
    assert gzip.decompress(packed.read_bytes()) == (writer.path / "events.jsonl").read_bytes()
    again = tmp_path / "again" / ARCHIVED_EVENTS_FILE
    again.parent.mkdir()
    pack_log(writer.path / "events.jsonl", again)
    assert again.read_bytes() == packed.read_bytes()  # archiving twice uploads the same bytes
    with open_log(packed) as handle:
        assert json.loads(handle.readline())["type"] == "session.start"
    assert find_logs(tmp_path / "sessions") == [writer.path / "events.jsonl"]
    assert sorted(find_logs(tmp_path)) == sorted([again, packed])
    assert first_event(tmp_path / "missing") == {}


@pytest.mark.parametrize("damage", [b"not gzip", b""])
def test_a_damaged_archived_log_reads_as_no_first_event(tmp_path: Path, damage: bytes) -> None:
    packed = tmp_path / ARCHIVED_EVENTS_FILE
    packed.write_bytes(damage)
    assert first_event(packed) == {}
