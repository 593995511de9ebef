"""`airlock gate request|decide|list` as real processes: exit codes 0 / 82 / 83 / 80."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from tests.gate import gate_cli

from airlock.errors import ExitCode
from airlock.gate import pending


def _wait_pending(
    directory: Path, proc: subprocess.Popen[str], timeout: float = 60
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(pending(directory))
        if found:
            return found[0]
        time.sleep(0.05)
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"the request never appeared (exit {proc.returncode}): {err}")


@pytest.mark.parametrize(("verdict", "code"), [("--approve", 0), ("--deny", 82)])
def test_file_backend_request_then_decide(tmp_path: Path, verdict: str, code: int) -> None:
    approvals = tmp_path / "approvals"
    waiting = gate_cli.start(
        [
            "request",
            "--backend",
            "file",
            "--dir",
            str(approvals),
            "--operation",
            "terraform apply -target=aws_db_instance.main",
            "--timeout",
            "120s",
            "--json",
        ],
        cwd=tmp_path,
    )
    request = _wait_pending(approvals, waiting)
    assert request["operation"]["text"] == "terraform apply -target=aws_db_instance.main"  # type: ignore[index]
    rc, out, _ = gate_cli.run(["list", "--dir", str(approvals)], cwd=tmp_path)
    assert rc == 0 and str(request["request_id"]) in out
    rc, out, err = gate_cli.run(
        ["decide", str(request["request_id"]), verdict, "--dir", str(approvals), "--by", "alice"],
        cwd=tmp_path,
    )
    assert rc == 0, err
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == code, err
    result = json.loads(out)
    assert result["by"] == "alice" and result["operation_hash"] == request["operation_hash"]
    assert result["signature"] and result["key_id"].startswith("ed25519:")
    if code:
        assert "denied by alice" in err


def test_timeout_exits_83(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = gate_cli.run_here(
        [
            "request",
            "--backend",
            "file",
            "--dir",
            str(tmp_path / "a"),
            "--operation",
            "x y z",
            "--timeout",
            "1s",
        ]
    )
    assert rc == ExitCode.APPROVAL_TIMEOUT
    assert "nobody answered" in capsys.readouterr().err


def test_deny_backend_exits_82(capsys: pytest.CaptureFixture[str]) -> None:
    rc = gate_cli.run_here(["request", "--backend", "deny", "--operation", "rm -rf /data"])
    assert rc == ExitCode.APPROVAL_DENIED
    assert "deny backend" in capsys.readouterr().err


def test_console_without_terminal_exits_82(tmp_path: Path) -> None:
    rc, _, err = gate_cli.run(
        ["request", "--backend", "console", "--operation", "deploy"],
        cwd=tmp_path,
        start_new_session=True,  # no controlling terminal: /dev/tty cannot be opened
    )
    assert rc == ExitCode.APPROVAL_DENIED
    assert "non-interactive" in err


def test_operation_from_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    op_file = tmp_path / "plan.txt"
    op_file.write_text("DELETE FROM sessions WHERE expired\n")
    rc = gate_cli.run_here(["request", "--backend", "deny", "--file", str(op_file), "--json"])
    assert rc == ExitCode.APPROVAL_DENIED
    result = json.loads(capsys.readouterr().out)
    assert result["operation"]["text"] == "DELETE FROM sessions WHERE expired\n"
    assert result["approved"] is False


def test_operation_from_stdin(tmp_path: Path) -> None:
    proc = gate_cli.start(
        ["request", "--backend", "deny", "--file", "-", "--json"],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
    )
    out, _ = proc.communicate("kubectl delete ns prod", timeout=30)
    assert proc.returncode == ExitCode.APPROVAL_DENIED
    assert json.loads(out)["operation"]["text"] == "kubectl delete ns prod"


def test_secret_in_operation_is_masked_before_anyone_sees_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = "ghp_" + "a1B2c3D4e5" * 3 + "xyzxyz"
    approvals = tmp_path / "a"
    rc = gate_cli.run_here(
        [
            "request",
            "--backend",
            "file",
            "--dir",
            str(approvals),
            "--timeout",
            "1s",
            "--json",
            "--operation",
            f"curl -H 'Authorization: token {token}' https://api.github.com",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == ExitCode.APPROVAL_TIMEOUT
    assert token not in out + err
    files = "".join(p.read_text() for p in approvals.rglob("*.json"))
    assert token not in files and "[MASKED:" in files


@pytest.mark.parametrize(
    "args",
    [
        ["request", "--backend", "deny"],
        ["request", "--backend", "deny", "--operation", "   "],
        ["request", "--backend", "deny", "--operation", "x", "--timeout", "soon"],
        ["request", "--backend", "deny", "--operation", "x", "--timeout", "0s"],
        ["request", "--backend", "pigeon", "--operation", "x"],
        ["decide", "abc"],
    ],
)
def test_usage_errors_exit_80(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert gate_cli.run_here(args) == ExitCode.USAGE
    assert capsys.readouterr().err


def test_decide_unknown_request_exits_85(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = gate_cli.run_here(["decide", "a" * 32, "--approve", "--dir", str(tmp_path)])
    assert rc == ExitCode.UNAVAILABLE
    assert "no approval request" in capsys.readouterr().err


def test_env_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRLOCK_GATE_BACKEND", "deny")
    assert gate_cli.run_here(["request", "--operation", "x y"]) == ExitCode.APPROVAL_DENIED
