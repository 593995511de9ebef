"""Attacks on what Airlock writes into the checkout after the agent has ended, with real
bubblewrap and ``airlock`` processes, checked from outside.

On GitLab, ``airlock ci finalize`` writes the job's artifacts (summary, HTML report, dotenv
report, a copy of the sessions) to ``$CI_PROJECT_DIR/airlock``: inside the workspace the agent
could write, and that a hostile merge request could fill from its own commits. It runs outside
the sandbox, as the runner's user. What it finds there is not its own:

- a symlink in place of a file it writes points the write anywhere the runner's user may write
  (``~/.bashrc``, the runner's config, Airlock's signing key);
- a file in place of ``sessions/`` stopped finalize before the dotenv report was written, and
  the agent's own ``airlock.env`` became the job's dotenv report: its variables override the
  next jobs' ``variables:`` (``AIRLOCK_EXECUTABLE``, ``AIRLOCK_SANDBOX``...).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.service,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

AIRLOCK = str(Path(sys.executable).parent / "airlock")


def _job_env(tmp_path: Path, project: Path) -> dict[str, str]:
    """A GitLab job's variables as the template sets them (sessions outside the project)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI_", "GITLAB"))}
    sessions = tmp_path / "builds" / ".airlock" / "1" / "sessions"
    sessions.mkdir(parents=True)
    env.update(
        XDG_CONFIG_HOME=str(tmp_path / "cfg"),
        CI_PROJECT_DIR=str(project),
        AIRLOCK_SESSIONS=str(sessions),
        AIRLOCK_ARTIFACTS=str(project / "airlock"),
        AIRLOCK_CI_PLATFORM="gitlab",
    )
    return env


def _agent_then_finalize(
    tmp_path: Path, script: str
) -> tuple[Path, subprocess.CompletedProcess[bytes]]:
    project = tmp_path / "builds" / "proj"
    project.mkdir(parents=True)
    env = _job_env(tmp_path, project)
    agent = subprocess.run(
        [AIRLOCK, "run", "--pty", "never", "--sandbox", "required", "--", "sh", "-c", script],
        cwd=project, env=env, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert agent.returncode == 0, agent.stderr
    assert b"planted" in agent.stdout, agent.stderr
    finalize = subprocess.run(
        [AIRLOCK, "ci", "finalize"],
        cwd=project, env=env, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    return project / "airlock", finalize


def test_symlinks_in_the_artifacts_dir_never_redirect_finalize_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victims = {name: outside / name for name in ("bashrc", "config", "signing-key", "dir")}
    for path in list(victims.values())[:3]:
        path.write_text("precious\n")
    victims["dir"].mkdir()
    plant = (
        "mkdir airlock && "
        f"ln -s {victims['bashrc']} airlock/summary.md && "
        f"ln -s {victims['config']} airlock/airlock.env && "
        f"ln -s {victims['signing-key']} airlock/report.html && "
        f"ln -s {victims['dir']} airlock/sessions && echo planted"
    )

    artifacts, finalize = _agent_then_finalize(tmp_path, plant)

    assert finalize.returncode == 0, finalize.stderr
    written = {p.name: p.read_text() for p in outside.iterdir() if p.is_file()}
    assert written == dict.fromkeys(("bashrc", "config", "signing-key"), "precious\n")
    assert list(victims["dir"].iterdir()) == [], "sessions were copied outside the project"
    for name in ("summary.md", "airlock.env", "report.html", "sessions"):
        assert not (artifacts / name).is_symlink(), name
    assert "AIRLOCK_VERIFIED=ok" in (artifacts / "airlock.env").read_text()
    [session] = (artifacts / "sessions").iterdir()
    assert (session / "manifest.json").is_file()


def test_the_agent_cannot_leave_its_own_dotenv_report(tmp_path: Path) -> None:
    forged = "AIRLOCK_EXECUTABLE=/builds/proj/airlock/evil.sh\nAIRLOCK_SANDBOX=off\n"
    plant = f"mkdir airlock && touch airlock/sessions && printf '{forged}' > airlock/airlock.env"

    artifacts, finalize = _agent_then_finalize(tmp_path, plant + " && echo planted")

    dotenv = (artifacts / "airlock.env").read_text()
    assert "AIRLOCK_EXECUTABLE" not in dotenv and "AIRLOCK_SANDBOX" not in dotenv, dotenv
    assert "AIRLOCK_SESSION_STATUS=complete" in dotenv
    assert finalize.returncode == 0, finalize.stderr
    [session] = (artifacts / "sessions").iterdir()
    assert (session / "manifest.json").is_file()


def test_a_session_the_agent_forged_in_the_artifacts_is_not_passed_on(tmp_path: Path) -> None:
    """``airlock/sessions`` is what the archive job (``.airlock-archive``) archives: only the
    sessions Airlock recorded belong there."""
    forged = "airlock/sessions/20990101T000000Z-forged"
    plant = f"mkdir -p {forged} && echo '{{}}' > {forged}/manifest.json && echo planted"

    artifacts, finalize = _agent_then_finalize(tmp_path, plant)

    assert finalize.returncode == 0, finalize.stderr
    [session] = (artifacts / "sessions").iterdir()
    assert session.name != "20990101T000000Z-forged"
    assert (session / "manifest.json").is_file()
