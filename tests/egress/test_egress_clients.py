"""Real package and source clients through the egress proxy: `pip download` from a local simple
index over HTTPS, and `git clone` over HTTPS from git http-backend, both with a test CA; a
host the policy does not allow fails fast with the proxy's refusal."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.egress.conftest import Events, ProxyFactory
from tests.egress.servers import GitHandler, serve
from tests.support.tls_ca import LocalCA

_PROJECT = "airlock-egress-probe"
_WHEEL = "airlock_egress_probe-1.0-py3-none-any.whl"


def _wheel() -> bytes:
    files = {
        "airlock_egress_probe/__init__.py": b"VALUE = 1\n",
        "airlock_egress_probe-1.0.dist-info/METADATA": (
            b"Metadata-Version: 2.1\nName: airlock-egress-probe\nVersion: 1.0\n"
        ),
        "airlock_egress_probe-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("airlock_egress_probe-1.0.dist-info/RECORD,,")
    files["airlock_egress_probe-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


@pytest.fixture
def index_port(tmp_path: Path, ca: LocalCA) -> Iterator[int]:
    root = tmp_path / "index"
    (root / "simple" / _PROJECT).mkdir(parents=True)
    (root / "files").mkdir()
    wheel = _wheel()
    (root / "files" / _WHEEL).write_bytes(wheel)
    digest = hashlib.sha256(wheel).hexdigest()
    (root / "simple" / _PROJECT / "index.html").write_text(
        f'<html><body><a href="../../files/{_WHEEL}#sha256={digest}">{_WHEEL}</a></body></html>\n'
    )
    with serve(directory=root, tls=ca.server_context(["pypi.test"])) as server:
        yield server.server_address[1]


def _client_env(tmp_path: Path, proxy_url: str, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "HTTPS_PROXY": proxy_url,
        "https_proxy": proxy_url,
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        **extra,
    }


def _pip_download(
    tmp_path: Path, url: str, ca: LocalCA, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--retries", "0",
         "--timeout", "10", "--index-url", url, "--cert", str(ca.path), "-d",
         str(tmp_path / "out"), _PROJECT],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_pip_download_through_the_proxy(
    tmp_path: Path, start_proxy: ProxyFactory, events: Events, ca: LocalCA, index_port: int
) -> None:
    network = (
        f"network: {{allow: [{{id: index, host: pypi.test, ports: [{index_port}], "
        "local_addresses: true}]}"
    )
    proxy = start_proxy(network)
    env = _client_env(tmp_path, proxy.url)
    done = _pip_download(tmp_path, f"https://pypi.test:{index_port}/simple/", ca, env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / _WHEEL).read_bytes() == _wheel()
    denied = _pip_download(tmp_path / "d", f"https://other.test:{index_port}/simple/", ca, env)
    assert denied.returncode != 0
    assert not (tmp_path / "d" / "out" / _WHEEL).exists()
    proxy.close()
    net = events.net()
    allowed = [e for e in net if e["host"] == "pypi.test"]
    assert allowed and all(e["outcome"] == "allowed" and e["sni"] == "pypi.test" for e in allowed)
    refused = [e for e in net if e["host"] == "other.test"]
    assert refused and all(e["rule_id"] == "airlock.default-deny" for e in refused)
    assert len(allowed) + len(refused) == len(net)


@pytest.fixture
def git_port(tmp_path: Path, ca: LocalCA) -> Iterator[int]:
    work = tmp_path / "work"
    env = {"HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1", "PATH": os.environ["PATH"]}
    git = [
        "git",
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.test",
        "-c",
        "init.defaultBranch=main",
    ]
    subprocess.run([*git, "init", "-q", str(work)], env=env, check=True)
    (work / "README").write_text("cloned through the egress proxy\n")
    subprocess.run([*git, "-C", str(work), "add", "README"], env=env, check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "first"], env=env, check=True)
    root = tmp_path / "git"
    root.mkdir()
    subprocess.run(
        [*git, "clone", "-q", "--bare", str(work), str(root / "repo.git")], env=env, check=True
    )
    with serve(GitHandler, tls=ca.server_context(["git.test"]), git_root=root) as server:
        yield server.server_address[1]


def test_git_clone_over_https_through_the_proxy(
    tmp_path: Path, start_proxy: ProxyFactory, events: Events, ca: LocalCA, git_port: int
) -> None:
    network = (
        f"network: {{allow: [{{id: forge, host: git.test, ports: [{git_port}], "
        "local_addresses: true}]}"
    )
    proxy = start_proxy(network)
    env = _client_env(tmp_path, proxy.url, GIT_SSL_CAINFO=str(ca.path))
    done = subprocess.run(
        ["git", "clone", "-q", f"https://git.test:{git_port}/repo.git", str(tmp_path / "clone")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "clone" / "README").read_text() == "cloned through the egress proxy\n"
    refused = subprocess.run(
        ["git", "clone", "-q", f"https://elsewhere.test:{git_port}/repo.git", str(tmp_path / "no")],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert refused.returncode != 0 and "403" in refused.stderr
    proxy.close()
    net = events.net()
    allowed = [e for e in net if e["host"] == "git.test"]
    assert allowed and all(e["rule_id"] == "forge" and e["outcome"] == "allowed" for e in allowed)
    assert sum(e["bytes_down"] for e in allowed) > 0
    assert [e["outcome"] for e in net if e["host"] == "elsewhere.test"] == ["denied"]
