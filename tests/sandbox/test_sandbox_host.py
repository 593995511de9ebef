"""`airlock ci sandbox-host`: what a runner is made to do before a sandboxed agent runs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from airlock.ci import sandbox_host
from airlock.errors import InfrastructureUnavailable, UsageError


def test_required_is_refused_off_linux_and_best_effort_warns() -> None:
    said: list[str] = []
    with pytest.raises(InfrastructureUnavailable, match="needs Linux"):
        sandbox_host.prepare_sandbox_host("required", say=said.append, system="Darwin")
    sandbox_host.prepare_sandbox_host("best_effort", say=said.append, system="Windows")
    assert "uncontained" in said[-1]
    with pytest.raises(UsageError, match="sandbox must be one of"):
        sandbox_host.prepare_sandbox_host("strict", say=said.append)


def test_lifts_the_apparmor_restriction_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    knob = tmp_path / "apparmor_restrict_unprivileged_userns"
    knob.write_text("1\n")
    monkeypatch.setattr(sandbox_host, "APPARMOR_USERNS", knob)
    ran: list[list[str]] = []

    def run(argv: Sequence[str]) -> int:
        ran.append(list(argv))
        return 0

    said: list[str] = []
    sandbox_host.prepare_sandbox_host("required", say=said.append, run=run, system="Linux")
    assert any(argv[-3:] == ["sysctl", "-w", "kernel.apparmor_restrict_unprivileged_userns=0"]
               for argv in ran)  # fmt: skip
    assert any("apparmor_restrict_unprivileged_userns" in line for line in said)
    knob.write_text("0\n")
    ran.clear()
    sandbox_host.prepare_sandbox_host("required", say=said.append, run=run, system="Linux")
    assert not any("sysctl" in argv for argv in ran)
