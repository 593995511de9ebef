"""Every kind of tampering is caught, named, and placed on the right line."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from airlock.audit import SigningKey, verify_session
from airlock.audit._format import canonical_json, encode_line
from airlock.errors import VerificationFailed

SessionFactory = Callable[..., Path]

Trusted = dict[str, Ed25519PublicKey]


def lines_of(session: Path) -> list[bytes]:
    return (session / "events.jsonl").read_bytes().splitlines()


def write_lines(session: Path, lines: list[bytes]) -> None:
    (session / "events.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))


def flip_in_data(line: bytes) -> bytes:
    """Change one character inside the data object, keeping the line valid JSON and its size."""
    at = line.index(b'"data":') + len(b'"data":{"') + 1
    return line[:at] + (b"X" if line[at : at + 1] != b"X" else b"Y") + line[at + 1 :]


def expect(session: Path, trusted: Trusted, kind: str, line: int | None) -> VerificationFailed:
    with pytest.raises(VerificationFailed) as info:
        verify_session(session, trusted)
    assert (info.value.kind, info.value.line) == (kind, line), info.value.message
    if line is not None:
        assert f"line {line}" in info.value.message
    return info.value


def resign(session: Path, key: SigningKey, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit the manifest and sign it again with ``key``."""
    path = session / "manifest.json"
    manifest = json.loads(path.read_bytes())
    change(manifest)
    manifest.pop("signatures")
    sig = key.sign(canonical_json(manifest))
    manifest["signatures"] = [
        {"alg": "Ed25519", "key_id": key.key_id, "sig": base64.b64encode(sig).decode()}
    ]
    path.write_text(json.dumps(manifest))


def test_untampered_session_verifies(make_session: SessionFactory, trusted: Trusted) -> None:
    report = verify_session(make_session(10), trusted)
    assert (report.status, report.event_count, report.warnings) == ("complete", 10, ())
    assert report.key_id in trusted


@pytest.mark.parametrize("target", [1, 4, 9])
def test_modified_line_is_named(
    make_session: SessionFactory, trusted: Trusted, target: int
) -> None:
    session = make_session(10)
    lines = lines_of(session)
    lines[target - 1] = flip_in_data(lines[target - 1])
    write_lines(session, lines)
    expect(session, trusted, "modified", target)


def test_modified_last_line_breaks_the_sealed_head(
    make_session: SessionFactory, trusted: Trusted
) -> None:
    session = make_session(10)
    lines = lines_of(session)
    lines[-1] = flip_in_data(lines[-1])
    write_lines(session, lines)
    expect(session, trusted, "modified", 10)


def test_modified_line_of_other_length(make_session: SessionFactory, trusted: Trusted) -> None:
    session = make_session(10)
    lines = lines_of(session)
    lines[5] = lines[5].replace(b'"data":{', b'"data":{"extra":true,', 1)
    write_lines(session, lines)
    expect(session, trusted, "modified", 6)


def test_edited_prev_field_is_named(make_session: SessionFactory, trusted: Trusted) -> None:
    session = make_session(10)
    lines = lines_of(session)
    lines[4] = lines[4].replace(json.loads(lines[4])["prev"].encode(), b"0" * 64)
    write_lines(session, lines)
    expect(session, trusted, "modified", 5)


@pytest.mark.parametrize(("first", "last"), [(5, 5), (4, 6), (2, 2)])
def test_deleted_lines(
    make_session: SessionFactory, trusted: Trusted, first: int, last: int
) -> None:
    session = make_session(10)
    lines = lines_of(session)
    del lines[first - 1 : last]
    write_lines(session, lines)
    err = expect(session, trusted, "deleted", first)
    assert f"{last - first + 1} line(s) deleted" in err.message


def test_deleted_first_line(make_session: SessionFactory, trusted: Trusted) -> None:
    session = make_session(10)
    write_lines(session, lines_of(session)[1:])
    expect(session, trusted, "deleted", 1)


def test_deleted_last_line_is_truncation(make_session: SessionFactory, trusted: Trusted) -> None:
    session = make_session(10)
    write_lines(session, lines_of(session)[:-1])
    expect(session, trusted, "truncated", 10)


def test_cut_mid_line_is_truncation(make_session: SessionFactory, trusted: Trusted) -> None:
    session = make_session(10)
    events = session / "events.jsonl"
    data = events.read_bytes()
    events.write_bytes(data[: len(data) - 7])
    expect(session, trusted, "truncated", 10)


def test_half_the_log_gone(make_session: SessionFactory, trusted: Trusted) -> None:
    session = make_session(10)
    write_lines(session, lines_of(session)[:5])
    expect(session, trusted, "truncated", 6)


def test_log_file_removed(make_session: SessionFactory, trusted: Trusted) -> None:
    session = make_session(3)
    (session / "events.jsonl").unlink()
    expect(session, trusted, "truncated", 1)


def test_duplicated_line_is_an_insertion(make_session: SessionFactory, trusted: Trusted) -> None:
    session = make_session(10)
    lines = lines_of(session)
    lines.insert(5, lines[4])
    write_lines(session, lines)
    expect(session, trusted, "inserted", 6)


def test_forged_line_with_valid_seq_and_prev(
    make_session: SessionFactory, trusted: Trusted
) -> None:
    """The forger computes seq and prev right; the chain still shows the line does not belong."""
    session = make_session(10)
    lines = lines_of(session)
    prev = hashlib.sha256(lines[3]).hexdigest()
    forged = encode_line(4, "2026-01-01T00:00:00.000000Z", "output", prev, {"text": "hi"})
    lines.insert(4, forged)
    write_lines(session, lines)
    expect(session, trusted, "inserted", 5)


def test_replayed_old_line(make_session: SessionFactory, trusted: Trusted) -> None:
    session = make_session(10)
    lines = lines_of(session)
    lines.insert(6, lines[1])
    write_lines(session, lines)
    expect(session, trusted, "inserted", 7)


def test_line_appended_after_seal(make_session: SessionFactory, trusted: Trusted) -> None:
    session = make_session(10)
    lines = lines_of(session)
    prev = hashlib.sha256(lines[-1]).hexdigest()
    lines.append(encode_line(10, "2026-01-01T00:00:00.000000Z", "output", prev, {"text": "x"}))
    write_lines(session, lines)
    expect(session, trusted, "inserted", 11)


def test_partial_bytes_appended_to_a_complete_session(
    make_session: SessionFactory, trusted: Trusted
) -> None:
    session = make_session(10)
    with (session / "events.jsonl").open("ab") as handle:
        handle.write(b'{"seq":10,')
    expect(session, trusted, "inserted", 11)


def test_swapped_lines_are_reordered(make_session: SessionFactory, trusted: Trusted) -> None:
    session = make_session(10)
    lines = lines_of(session)
    lines[3], lines[4] = lines[4], lines[3]
    write_lines(session, lines)
    expect(session, trusted, "reordered", 4)


def test_line_moved_later_is_reordered(make_session: SessionFactory, trusted: Trusted) -> None:
    session = make_session(10)
    lines = lines_of(session)
    moved = lines.pop(2)
    lines.insert(7, moved)
    write_lines(session, lines)
    expect(session, trusted, "reordered", 3)


def test_line_moved_earlier_is_reordered(make_session: SessionFactory, trusted: Trusted) -> None:
    session = make_session(10)
    lines = lines_of(session)
    moved = lines.pop(7)
    lines.insert(2, moved)
    write_lines(session, lines)
    expect(session, trusted, "reordered", 3)


def test_not_json_line_is_malformed(make_session: SessionFactory, trusted: Trusted) -> None:
    session = make_session(10)
    lines = lines_of(session)
    lines[2] = b"this is not json"
    write_lines(session, lines)
    expect(session, trusted, "malformed", 3)


def test_line_missing_a_field_is_malformed(make_session: SessionFactory, trusted: Trusted) -> None:
    session = make_session(10)
    lines = lines_of(session)
    event = json.loads(lines[2])
    del event["ts"]
    lines[2] = json.dumps(event, separators=(",", ":")).encode()
    write_lines(session, lines)
    expect(session, trusted, "malformed", 3)


@pytest.mark.parametrize(
    ("field", "value"),
    [("event_count", 9), ("status", "incomplete"), ("exit_code", 1), ("head", "0" * 64)],
)
def test_edited_manifest(
    make_session: SessionFactory, trusted: Trusted, field: str, value: Any
) -> None:
    session = make_session(10)
    path = session / "manifest.json"
    manifest = json.loads(path.read_bytes())
    manifest[field] = value
    path.write_text(json.dumps(manifest))
    err = expect(session, trusted, "manifest-edited", None)
    assert "manifest.json" in err.message


def test_manifest_without_signature(make_session: SessionFactory, trusted: Trusted) -> None:
    session = make_session(3)
    path = session / "manifest.json"
    manifest = json.loads(path.read_bytes())
    manifest["signatures"] = []
    path.write_text(json.dumps(manifest))
    expect(session, trusted, "manifest-edited", None)


def test_manifest_not_json(make_session: SessionFactory, trusted: Trusted) -> None:
    session = make_session(3)
    (session / "manifest.json").write_text("{not json")
    expect(session, trusted, "malformed", None)


def test_resigned_with_another_key_is_untrusted(
    make_session: SessionFactory, trusted: Trusted
) -> None:
    """Delete a line, fix up the seal and sign it with the attacker's key."""
    session = make_session(10)
    lines = lines_of(session)[:-1]
    write_lines(session, lines)
    data = b"".join(line + b"\n" for line in lines)

    def fix(m: dict[str, Any]) -> None:
        m.update(
            event_count=9,
            last_seq=8,
            head=hashlib.sha256(lines[-1]).hexdigest(),
            log_bytes=len(data),
            log_sha256=hashlib.sha256(data).hexdigest(),
        )

    attacker = SigningKey.generate()
    resign(session, attacker, fix)
    err = expect(session, trusted, "untrusted-key", None)
    assert attacker.key_id in err.message
    # ...and the attacker's own key would accept it: the trust decision is the point.
    report = verify_session(session, {attacker.key_id: attacker.public_key})
    assert report.event_count == 9


def test_claiming_a_trusted_key_id_does_not_help(
    make_session: SessionFactory, trusted: Trusted, key: SigningKey
) -> None:
    session = make_session(3)
    attacker = SigningKey.generate()
    resign(session, attacker, lambda m: m.update(exit_code=0))
    path = session / "manifest.json"
    manifest = json.loads(path.read_bytes())
    manifest["signatures"][0]["key_id"] = key.key_id
    path.write_text(json.dumps(manifest))
    expect(session, trusted, "manifest-edited", None)


def test_unsealed_session_fails_with_a_hint(make_session: SessionFactory, trusted: Trusted) -> None:
    session = make_session(5, seal=False)
    err = expect(session, trusted, "unsealed", None)
    assert "airlock seal" in err.hint


def test_renamed_directory_still_verifies_with_a_warning(
    make_session: SessionFactory, trusted: Trusted
) -> None:
    session = make_session(4)
    moved = session.rename(session.with_name("copy-of-session"))
    report = verify_session(moved, trusted)
    assert any("differs from session id" in w for w in report.warnings)


def test_log_from_another_session_does_not_chain(
    make_session: SessionFactory, trusted: Trusted
) -> None:
    one, two = make_session(4), make_session(4)
    (one / "events.jsonl").write_bytes((two / "events.jsonl").read_bytes())
    expect(one, trusted, "modified", 1)


def test_checkpoints_are_checked_against_the_chain(
    make_session: SessionFactory, trusted: Trusted, key: SigningKey
) -> None:
    session = make_session(10)
    good = hashlib.sha256(lines_of(session)[3]).hexdigest()
    resign(session, key, lambda m: m.update(checkpoints=[{"seq": 3, "head": good}]))
    assert verify_session(session, trusted).checkpoints_checked == 1
    resign(session, key, lambda m: m.update(checkpoints=[{"seq": 3, "head": "0" * 64}]))
    expect(session, trusted, "checkpoint-mismatch", 4)


def test_empty_session_verifies(make_session: SessionFactory, trusted: Trusted) -> None:
    report = verify_session(make_session(0), trusted)
    assert report.event_count == 0


def test_verify_accepts_the_events_file_path(
    make_session: SessionFactory, trusted: Trusted
) -> None:
    session = make_session(3)
    assert verify_session(session / "events.jsonl", trusted).event_count == 3
