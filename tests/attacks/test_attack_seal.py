"""Attacks on sealing late: Airlock signs what it finds, with real ``airlock`` processes.

A session whose recorder died is sealed later as incomplete, with the signing key, by the next
``airlock run`` (its sessions directory) and by ``airlock ci finalize``. A directory that only
looks like a session is anyone's to write: committed to the repository under
``.airlock/sessions`` (the local default) or ``airlock/sessions`` (what GitLab's archive job
seals and archives, over the merge request's checkout), with a well-formed chain and any
identity and events. Airlock signed it, and ``airlock verify`` named the victim's key.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

AIRLOCK = str(Path(sys.executable).parent / "airlock")


def _airlock(cwd: Path, config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI_", "GITLAB"))}
    env["XDG_CONFIG_HOME"] = str(config)
    return subprocess.run(
        [AIRLOCK, *args], cwd=cwd, env=env, capture_output=True, timeout=120, check=False
    )


def test_a_session_committed_to_the_repository_is_never_sealed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir()
    made = _airlock(elsewhere, tmp_path / "attacker-cfg", "run", "--sandbox", "off", "--",
                    "echo", "approved by alice")  # fmt: skip
    assert made.returncode == 0, made.stderr
    [session] = (elsewhere / ".airlock" / "sessions").iterdir()
    (session / "manifest.json").unlink()  # unsealed: as if its recorder had died
    (session / "opened-on").unlink(missing_ok=True)
    (session / "opened-on").write_text("00000000-0000-0000-0000-000000000000")  # a guess
    repo = tmp_path / "repo"
    shutil.copytree(session, repo / ".airlock" / "sessions" / session.name)  # the commit

    run = _airlock(repo, tmp_path / "victim-cfg", "run", "--sandbox", "off", "--", "true")
    finalized = _airlock(repo, tmp_path / "victim-cfg", "ci", "finalize", "--sessions",
                       str(repo / ".airlock" / "sessions"), "--platform", "local")  # fmt: skip

    assert run.returncode == 0, run.stderr
    planted = repo / ".airlock" / "sessions" / session.name
    assert not (planted / "manifest.json").exists(), "Airlock signed a session it never recorded"
    assert f"sealed {session.name}".encode() not in finalized.stderr
