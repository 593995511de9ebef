"""Attacks on how the GitHub Actions start Airlock, with the real node shim and install.sh.

Every action step runs in the checkout (``$GITHUB_WORKSPACE``), which the agent writes during
its session and a pull request fills from its commits. ``python -m airlock…`` and ``python -c``
put the working directory first on ``sys.path``: an ``airlock/`` package there is imported
instead of Airlock, outside the sandbox, with the job's tokens and Airlock's signing key. The
agent plants it in one step; the next Airlock step of the job (a second run, archive, verify,
or the post step after a cancellation) runs it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.actions.test_actions_install import _warm_cache

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")

REPO = Path(__file__).resolve().parents[2]


def _plant(workspace: Path, marker: Path) -> None:
    package = workspace / "airlock"
    (package / "_commands").mkdir(parents=True)
    (package / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (package / "_commands" / "__init__.py").write_text("")
    (package / "_commands" / "ci.py").write_text("print('the agent ran here')\n")


def test_the_post_step_never_imports_an_airlock_package_from_the_checkout(
    tmp_path: Path,
) -> None:
    workspace = tmp_path / "workspace"
    marker = tmp_path / "ran-outside-the-sandbox"
    _plant(workspace, marker)
    venv = _warm_cache(tmp_path / "cache")
    (venv / "bin").mkdir()
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    env = {
        **os.environ,
        "AIRLOCK_CACHE_DIR": str(tmp_path / "cache"),
        "AIRLOCK_PYTHON": sys.executable,
        "AIRLOCK_INSTALLER": "pip",
        "PIP_NO_INDEX": "1",
        "STATE_started": "1",  # main started and never finished: post has duties
        "RUNNER_TEMP": str(tmp_path / "runner-temp"),
    }
    shim = REPO / "actions" / "_shim" / "shim.js"
    done = subprocess.run(
        ["node", "-e", f"require({str(shim)!r}).run('post')"],
        cwd=workspace, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "the agent ran here" not in done.stdout
    assert not marker.exists(), "the checkout's airlock/ package ran in the post step"
    assert "airlock" in done.stderr  # Airlock itself answered (whatever post made of no state)


def test_install_never_imports_from_the_checkout(tmp_path: Path) -> None:
    """A cold cache (every job on a hosted runner): install.sh runs ``python -m venv``, ``-m
    pip``, ``-m compileall`` and ``-c 'import …'``, from the checkout unless it moves away."""
    workspace = tmp_path / "workspace"
    marker = tmp_path / "ran-outside-the-sandbox"
    for name in ("venv", "pip"):
        (workspace / name).mkdir(parents=True)
        for module in ("__init__.py", "__main__.py"):
            (workspace / name / module).write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    env = {
        **os.environ,
        "AIRLOCK_CACHE_DIR": str(tmp_path / "cache"),
        "AIRLOCK_PYTHON": sys.executable,
        "AIRLOCK_INSTALLER": "pip",
        "PIP_NO_INDEX": "1",  # no package index here: the install itself fails, after the venv
    }
    done = subprocess.run(
        ["bash", str(REPO / "actions" / "_shim" / "install.sh")],
        cwd=workspace, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert "installing dependencies" in done.stderr, done.stderr
    assert not marker.exists(), "install.sh imported a package from the checkout"


def test_every_python_start_in_the_actions_ignores_the_working_directory() -> None:
    """The composite actions' ``run:`` lines, the venv's ``airlock`` wrapper and the GitLab
    template's install (the merge request's checkout is its working directory too): each
    ``python -m`` / ``python -c`` of Airlock's carries ``-P`` (Python 3.11+, which install.sh
    requires)."""
    starts = re.compile(
        r'(?:"\$AIRLOCK_PY"|\$\(dirname "\$0"\)/python"|"\$AIRLOCK_PYTHON"|"\$airlock_venv/bin/python")'
        r"((?: -\w)*) -[mc] "
    )
    files = [
        *REPO.glob("actions/*/action.yml"),
        REPO / "actions/_shim/install.sh",
        REPO / "gitlab-templates/airlock.yml",
    ]
    unsafe, seen = [], 0
    for path in files:
        for line in path.read_text().splitlines():
            for match in starts.finditer(line):
                seen += 1
                if "-P" not in match.group(1).split():
                    unsafe.append(f"{path.relative_to(REPO)}: {line.strip()}")
    assert seen > 10
    assert unsafe == []
