"""actions/_shim/install.sh on a cold cache: uv installs the pinned list; pip takes over when uv
fails. Each test builds a private venv from the package index into its own cache directory."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "actions" / "_shim" / "install.sh"
UV_VERSION = re.compile(r'^uv_version="([0-9.]+)"$', re.M)

pytestmark = pytest.mark.service


def install(cache: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "AIRLOCK_INSTALLER"}
    environ.update(AIRLOCK_CACHE_DIR=str(cache), UV_NO_CACHE="1", **env)
    return subprocess.run(
        ["bash", str(INSTALL)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def assert_working_venv(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stderr[-3000:]
    python = done.stdout.strip().splitlines()[-1]
    version = subprocess.run(
        [python, "-m", "airlock._cli", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.startswith("airlock ")


def test_cold_install_uses_uv(tmp_path: Path) -> None:
    done = install(tmp_path / "cache")
    assert_working_venv(done)
    assert "uv failed" not in done.stderr
    if shutil.which("uv") is None:  # not on PATH: bootstrapped, pinned, into the cache
        pinned = UV_VERSION.search(INSTALL.read_text())
        assert pinned is not None
        booted = [p.parent.parent.name for p in (tmp_path / "cache").glob("uv-*/bin/uv")]
        assert booted == [f"uv-{pinned[1]}"]


def test_pip_installs_when_uv_fails(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    uv = fake / "uv"
    uv.write_text("#!/bin/sh\necho 'uv: broken on purpose' >&2\nexit 2\n")
    uv.chmod(uv.stat().st_mode | stat.S_IXUSR)
    done = install(tmp_path / "cache", PATH=f"{fake}:{os.environ['PATH']}")
    assert_working_venv(done)
    assert "uv: broken on purpose" in done.stderr
    assert "airlock: uv failed; installing with pip" in done.stderr


def _path_without(tmp_path: Path, *missing: str) -> str:
    """A PATH of links to every tool on this PATH except ``missing`` (as on a bare image)."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for directory in reversed(os.environ["PATH"].split(os.pathsep)):
        for tool in Path(directory).glob("*") if Path(directory).is_dir() else []:
            if tool.name not in missing and os.access(tool, os.X_OK):
                (tools / tool.name).unlink(missing_ok=True)
                (tools / tool.name).symlink_to(tool)
    return str(tools)


def _warm_cache(cache: Path) -> Path:
    """The cache layout install.sh looks for, under the keys it computes with sha256sum
    (computed here the same way): with both present it installs nothing."""
    import hashlib
    import sys

    pyver = f"{sys.version_info[0]}.{sys.version_info[1]}"  # of AIRLOCK_PYTHON below
    shim = INSTALL.parent
    deps = hashlib.sha256(
        f"{pyver}\n".encode()
        + (REPO / "pyproject.toml").read_bytes()
        + (shim / "requirements.txt").read_bytes()
    ).hexdigest()[:20]
    files = sorted(
        (
            str(p.relative_to(REPO))
            for p in (REPO / "core/airlock").rglob("*")
            if p.is_file() and p.suffix != ".pyc"
        ),
        key=lambda s: s.encode(),
    )
    lines = "".join(f"{hashlib.sha256((REPO / f).read_bytes()).hexdigest()}  {f}\n" for f in files)
    src = hashlib.sha256(lines.encode()).hexdigest()[:20]
    venv = cache / f"venv-{deps}-{src}"
    (cache / f"deps-{deps}").mkdir(parents=True)
    venv.mkdir()
    return venv


def test_the_cache_key_is_the_same_with_shasum_and_refused_without_any(tmp_path: Path) -> None:
    import sys

    cache = tmp_path / "cache"
    venv = _warm_cache(cache)
    fast_fail = {"AIRLOCK_PYTHON": sys.executable, "AIRLOCK_INSTALLER": "pip", "PIP_NO_INDEX": "1"}
    done = install(cache, **fast_fail)  # sha256sum: the key computed above
    assert done.returncode == 0 and done.stdout.strip() == f"{venv}/bin/python", done.stderr
    path = _path_without(tmp_path, "sha256sum")
    again = install(cache, PATH=path, **fast_fail)  # shasum -a 256: the very same key
    assert again.returncode == 0 and again.stdout == done.stdout, again.stderr
    (Path(path) / "shasum").unlink()
    refused = install(cache, PATH=path, **fast_fail)
    assert refused.returncode == 80
    assert "neither sha256sum nor shasum is installed" in refused.stderr
