"""`airlock verify | show | seal` through main() and, for exit codes, the installed script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airlock._cli import main
from airlock.audit import SessionWriter, SigningKey, load_signing_key
from airlock.errors import ExitCode
from airlock.events import EventType

AIRLOCK = Path(sys.executable).with_name("airlock")


@pytest.fixture(autouse=True)
def _config_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("AIRLOCK_KEY", "AIRLOCK_TRUST_KEYS", "AIRLOCK_JSON", "AIRLOCK_ALLOW_INCOMPLETE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def sessions(tmp_path: Path) -> Path:
    return tmp_path / "sessions"


def record(sessions: Path, key: SigningKey | None, *, sid: str | None = None) -> Path:
    """A small realistic session, sealed with ``key`` (left unsealed when None)."""
    writer = SessionWriter.create(sessions, sid)
    writer.append(
        EventType.SESSION_START,
        {"identity": {"platform": "local", "repository": "acme/api"}, "argv": ["agent", "--go"]},
    )
    writer.append(EventType.PROCESS_EXEC, {"pid": 42, "argv": ["git", "commit", "-m", "a b"]})
    writer.append(EventType.OUTPUT, {"stream": "stdout", "text": "ok \x1b[31mred\x1b[0m done\n"})
    writer.append(EventType.PROCESS_EXIT, {"pid": 42, "status": 0})
    writer.append(EventType.SESSION_END, {"exit_status": 0, "duration_seconds": 0.5})
    if key is None:
        writer.close()
    else:
        writer.seal(key, exit_code=0)
    return writer.path


def tamper(session: Path, line: int) -> None:
    events = session / "events.jsonl"
    lines = events.read_bytes().splitlines(keepends=True)
    lines[line - 1] = lines[line - 1].replace(b'"pid":42', b'"pid":43', 1)
    events.write_bytes(b"".join(lines))


def test_verify_ok_prints_one_line(sessions: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = load_signing_key()
    session = record(sessions, key)
    assert main(["verify", str(session)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    assert out[0].startswith(f"verified {session.name}: 5 events, head ")
    assert out[0].endswith(f"…, signed by {key.key_id}")


def test_verify_tampered_names_line_and_kind(
    sessions: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session = record(sessions, load_signing_key())
    tamper(session, 2)
    assert main(["verify", str(session)]) == ExitCode.VERIFY_FAILED
    err = capsys.readouterr().err
    assert "line 2" in err and "modified" in err


def test_verify_json_on_success_and_failure(
    sessions: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session = record(sessions, load_signing_key())
    assert main(["verify", str(session), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["ok"], report["status"], report["event_count"]) == (True, "complete", 5)
    tamper(session, 4)
    assert main(["verify", str(session), "--json"]) == ExitCode.VERIFY_FAILED
    failure = json.loads(capsys.readouterr().out)
    assert (failure["ok"], failure["kind"], failure["line"]) == (False, "modified", 4)


def test_incomplete_is_never_reported_as_fine(
    sessions: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    session = record(sessions, None)
    assert main(["seal", str(session)]) == 0
    assert "sealed" in capsys.readouterr().out
    assert main(["verify", str(session)]) == ExitCode.VERIFY_FAILED
    captured = capsys.readouterr()
    assert captured.out.startswith("INCOMPLETE")
    assert "--allow-incomplete" in captured.err
    assert main(["verify", str(session), "--allow-incomplete"]) == 0
    assert capsys.readouterr().out.startswith("INCOMPLETE")
    assert main(["verify", str(session), "--json"]) == ExitCode.VERIFY_FAILED
    report = json.loads(capsys.readouterr().out)
    assert (report["ok"], report["status"]) == (False, "incomplete")
    monkeypatch.setenv("AIRLOCK_ALLOW_INCOMPLETE", "1")
    assert main(["verify", str(session), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_trusted_keys_from_files_and_env(
    sessions: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    signer = SigningKey.generate()
    session = record(sessions, signer)
    pub = tmp_path / "signer.pub.pem"
    pub.write_bytes(signer.public_pem())
    assert main(["verify", str(session), "--key-file", str(pub)]) == 0
    monkeypatch.setenv("AIRLOCK_TRUST_KEYS", str(pub))
    assert main(["verify", str(session)]) == 0
    monkeypatch.delenv("AIRLOCK_TRUST_KEYS")
    load_signing_key()  # a local key exists, but it did not sign this session
    assert main(["verify", str(session)]) == ExitCode.VERIFY_FAILED
    assert "not a trusted key" in capsys.readouterr().err


def test_verify_without_any_trusted_key_is_a_usage_error(
    sessions: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session = record(sessions, SigningKey.generate())
    assert main(["verify", str(session)]) == ExitCode.USAGE
    assert "--key-file" in capsys.readouterr().err


def test_verify_s3_without_a_session_is_a_clear_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Verifying from S3 works (tests/archive/test_verify_from_s3.py); a URL that names no
    # session is refused before any network call.
    assert main(["verify", "s3://bucket"]) == ExitCode.USAGE
    assert "does not name a session directory" in capsys.readouterr().err


def test_verify_unsealed_hints_at_seal(sessions: Path, capsys: pytest.CaptureFixture[str]) -> None:
    load_signing_key()
    session = record(sessions, None)
    assert main(["verify", str(session)]) == ExitCode.VERIFY_FAILED
    assert "airlock seal" in capsys.readouterr().err


def test_seal_twice_is_refused(sessions: Path, capsys: pytest.CaptureFixture[str]) -> None:
    session = record(sessions, None)
    assert main(["seal", str(session), "--reason", "runner vanished"]) == 0
    manifest = json.loads((session / "manifest.json").read_text())
    assert (manifest["status"], manifest["reason"]) == ("incomplete", "runner vanished")
    assert main(["seal", str(session)]) == ExitCode.USAGE
    assert "already sealed" in capsys.readouterr().err


def test_seal_all_seals_only_the_unsealed(
    sessions: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sealed = record(sessions, load_signing_key())
    before = (sealed / "manifest.json").read_bytes()
    crashed = [record(sessions, None) for _ in range(2)]
    assert main(["seal", str(sessions), "--all"]) == 0
    assert all((c / "manifest.json").exists() for c in crashed)
    assert (sealed / "manifest.json").read_bytes() == before
    assert main(["seal", str(sessions), "--all"]) == 0
    assert "no unsealed sessions" in capsys.readouterr().out


def test_seal_with_an_exposed_key_file_is_refused(
    sessions: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session = record(sessions, None)
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(SigningKey.generate().private_pem())
    os.chmod(key_file, 0o644)
    assert main(["seal", str(session), "--key", str(key_file)]) == ExitCode.USAGE
    assert "chmod 600" in capsys.readouterr().err
    assert not (session / "manifest.json").exists()


def test_show_timeline_is_readable_and_terminal_safe(
    sessions: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session = record(sessions, load_signing_key())
    assert main(["show", str(session)]) == 0
    out = capsys.readouterr().out
    assert "sealed complete" in out
    assert "git commit -m 'a b'" in out
    assert "[42] exited 0" in out
    assert "\x1b" not in out  # recorded escape sequences are shown escaped, never replayed
    assert "\\x1b[31mred" in out
    assert len(out.splitlines()) == 6


def test_show_json_with_type_filter(sessions: Path, capsys: pytest.CaptureFixture[str]) -> None:
    session = record(sessions, load_signing_key())
    assert main(["show", str(session), "--json", "--type", "process"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["type"] for e in events] == ["process.exec", "process.exit"]
    assert main(["show", str(session), "--json", "--type", "output"]) == 0
    [only] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert only["data"]["text"].startswith("ok \x1b[31m")  # JSON keeps the exact bytes


def test_show_lists_sessions_newest_first(
    sessions: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = record(sessions, load_signing_key(), sid="20260101T000000Z-aaaaaaaaaa")
    new = record(sessions, None, sid="20260101T000000Z-bbbbbbbbbb")
    assert main(["show", str(sessions), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["session_id"] for r in rows] == [new.name, old.name]
    assert [r["status"] for r in rows] == ["unsealed", "complete"]
    assert rows[0]["command"] == "agent --go" and rows[0]["event_count"] == 5
    assert main(["show", str(sessions)]) == 0
    table = capsys.readouterr().out
    assert new.name in table and "unsealed" in table and "complete" in table


def test_show_missing_path_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["show", str(tmp_path / "nope")]) == ExitCode.USAGE
    assert "neither a session" in capsys.readouterr().err


def test_installed_script_exit_codes(sessions: Path, tmp_path: Path) -> None:
    key = SigningKey.generate()
    session = record(sessions, key)
    pub = tmp_path / "pub.pem"
    pub.write_bytes(key.public_pem())
    env = {**os.environ, "AIRLOCK_TRUST_KEYS": str(pub)}
    ok = subprocess.run(
        [str(AIRLOCK), "verify", str(session)], env=env, capture_output=True, text=True
    )
    assert (ok.returncode, ok.stdout.startswith("verified ")) == (0, True)
    tamper(session, 2)
    bad = subprocess.run(
        [str(AIRLOCK), "verify", str(session)], env=env, capture_output=True, text=True
    )
    assert bad.returncode == ExitCode.VERIFY_FAILED == 84
    assert bad.stderr.startswith("airlock: error: line 2: was modified")


def test_verify_a_directory_that_is_no_session(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load_signing_key()
    assert main(["verify", str(tmp_path)]) == ExitCode.USAGE
    assert "not a session directory" in capsys.readouterr().err


def test_verify_refuses_a_url_that_would_leave_its_directory(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["verify", "s3://bucket/prefix/../"]) == ExitCode.USAGE
    assert "does not name a session directory" in capsys.readouterr().err
