"""`airlock gate request --backend github-check|gitlab` goes through the broker with the job's
token; without `airlock credentials` first, it says what to run."""

from __future__ import annotations

from pathlib import Path

import pytest

from airlock._cli import main
from airlock.errors import ExitCode


@pytest.mark.parametrize("backend", ["github-check", "gitlab"])
def test_broker_backends_need_a_job_token(
    backend: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AIRLOCK_STATE_DIR", str(tmp_path / "no-state"))
    code = main(["gate", "request", "--backend", backend, "--operation", "deploy v1.2"])
    assert code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "no broker token" in err
    assert "airlock credentials" in err
