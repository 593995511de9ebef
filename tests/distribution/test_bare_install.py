"""The bare distribution (no extras) in a fresh venv: every command's --help works, and a command
whose extra is missing exits 80 naming the extra to install: never a traceback or "internal error".

The venv gets the package from a real wheel of this checkout (`pip install --no-deps --no-index`), and exactly the
base dependencies' files (the closure of `Requires-Dist` without extras), linked from this
interpreter's environment: offline, and nothing from an extra can be imported by accident.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from airlock._cli import build_parser
from airlock.audit import SessionWriter, load_signing_key
from airlock.errors import EXTRA_OF_MODULE

ROOT = Path(__file__).resolve().parents[2]


def _base_closure(names: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(names)
    while todo:
        req = Requirement(todo.pop())
        key = req.name.lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        for dep in metadata.requires(req.name) or []:
            parsed = Requirement(dep)
            if parsed.marker is None or any(
                parsed.marker.evaluate({"extra": extra}) for extra in ("", *req.extras)
            ):
                todo.append(str(parsed).split(";")[0])
    return seen


def _link_distribution(name: str, site: Path) -> None:
    dist = metadata.distribution(name)
    tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    for top in tops:
        source = Path(str(dist.locate_file(top)))
        target = site / top
        if source.exists() and not target.exists() and top != "__pycache__":
            target.symlink_to(source)


def _command_paths(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*prefix, name)
                yield from _command_paths(child, (*prefix, name))


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bare")
    venv, wheels = root / "venv", root / "wheels"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # offline: the wheel is built by this environment's hatchling, installed from that file alone
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-index", "--no-build-isolation", "-w", str(wheels), str(ROOT)],
        check=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("airlock_ci-*.whl")
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], check=True
    )  # fmt: skip
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    installed = metadata.PathDistribution.at(next(site.glob("airlock_ci-*.dist-info")))
    base = [r for r in installed.requires or [] if "extra ==" not in r]
    for name in _base_closure(base):
        _link_distribution(name, site)
    return venv


def _run(venv: Path, *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(venv / "bin" / "airlock"), *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def test_the_bare_venv_holds_no_optional_dependency(bare_venv: Path) -> None:
    probe = "import importlib.util, json, sys; print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m)]))"
    out = subprocess.run(
        [str(bare_venv / "bin" / "python"), "-c", probe, *EXTRA_OF_MODULE],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    )
    assert json.loads(out.stdout) == []


def test_every_command_help_works_without_extras(bare_venv: Path) -> None:
    paths = [" ".join(p) for p in _command_paths(build_parser())]
    assert {"gate request", "broker serve", "archive", "search"} <= set(paths)
    script = (
        "import contextlib, io, json, sys\n"
        "from airlock._cli import main\n"
        "codes = {}\n"
        "for path in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):\n"
        "        codes[path] = [main([*path.split(), '--help']), err.getvalue()]\n"
        "print(json.dumps(codes))\n"
    )
    out = subprocess.run(
        [str(bare_venv / "bin" / "python"), "-c", script, json.dumps(paths)],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
        timeout=120,
    )
    codes = json.loads(out.stdout)
    assert {path: code for path, (code, _) in codes.items() if code != 0} == {}, codes
    assert _run(bare_venv, "--help").returncode == 0


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (("search", "{sessions}"), "archive"),
        (("archive", "{sessions}", "--to", "s3://bucket/prefix"), "archive"),
        (("broker", "serve", "--config", "{sessions}/broker.yaml"), "broker"),
    ],
)
def test_a_missing_extra_exits_80_and_names_it(
    bare_venv: Path, tmp_path: Path, argv: tuple[str, ...], extra: str
) -> None:
    sessions = tmp_path / "sessions"
    writer = SessionWriter.create(sessions)
    writer.append("session.start", {"identity": {"platform": "local"}})
    writer.seal(load_signing_key(None), exit_code=0)
    (sessions / "broker.yaml").write_text("issuers: []\n")
    result = _run(bare_venv, *(a.format(sessions=sessions) for a in argv), cwd=tmp_path)
    assert result.returncode == 80, result.stderr
    assert f"install airlock-ci[{extra}]" in result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr


def test_job_side_approvals_through_the_broker_need_no_forge_library(bare_venv: Path) -> None:
    """PR-button approvals in the Action (github-check / gitlab through the broker) once
    crashed with ModuleNotFoundError: gitlab; the job side must not import forge clients."""
    script = (
        "import sys\n"
        "from airlock.audit.keys import SigningKey\n"
        "from airlock.jobs.approvals import BackendSettings, approval_backend\n"
        "key = SigningKey.generate()\n"
        "settings = BackendSettings(broker_url='http://127.0.0.1:9', job_token='t')\n"
        "names = [type(approval_backend(k, settings, key=key)).__name__\n"
        "         for k in ('github-check', 'gitlab')]\n"
        "import airlock.jobs.run\n"
        "print(names, [m for m in ('gitlab', 'github', 'requests') if m in sys.modules])\n"
    )
    out = subprocess.run(
        [str(bare_venv / "bin" / "python"), "-c", script],
        capture_output=True, text=True, env={"PATH": os.environ["PATH"]}, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['GitHubCheckBackend', 'GitLabBackend'] []"
