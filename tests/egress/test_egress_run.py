"""`airlock run` with a network: section: the proxy starts, the agent's curl goes through it
(HTTPS_PROXY set by Airlock), allowed and denied attempts are net.connect events, and `airlock
show` and the job summary show the denial."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.egress.servers import serve
from tests.support.tls_ca import LocalCA

from airlock.archive.summary import render_summary

AIRLOCK = str(Path(sys.executable).parent / "airlock")


@pytest.fixture
def https_port(ca: LocalCA, site_dir: Path) -> Iterator[int]:
    with serve(directory=site_dir, tls=ca.server_context(["localhost"])) as server:
        yield server.server_address[1]


def _run(
    tmp_path: Path, policy: str, script: str, sandbox: str = "off"
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "airlock.yaml"
    path.write_text(policy)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "cfg")
    return subprocess.run(
        [AIRLOCK, "run", "--sandbox", sandbox, "--policy", str(path), "--sessions", str(tmp_path / "s"), "--",
         "sh", "-c", script],
        env=env, capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip


def _events(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    [session] = list((tmp_path / "s").iterdir())
    lines = (session / "events.jsonl").read_text().splitlines()
    return session, [json.loads(line) for line in lines]


@pytest.mark.parametrize("sandbox", ["off", "required"])
def test_run_routes_the_agent_through_the_proxy(
    tmp_path: Path, ca: LocalCA, https_port: int, sandbox: str
) -> None:
    if sandbox == "required" and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (./dev setup installs it)")
    policy = (
        "capture: {exec: best_effort}\n"
        "network:\n"
        f"  allow: [{{id: local-site, host: localhost, ports: [{https_port}], "
        "local_addresses: true}]\n"
    )
    shutil.copy(ca.path, tmp_path / "ca.pem")  # the workspace: inside a sandbox /tmp is private
    script = (
        f"curl -sS --cacert ca.pem https://localhost:{https_port}/hello.txt; "
        f"curl -sS --cacert ca.pem https://denied.example:{https_port}/ || echo DENIED $?; "
        'echo "proxy=$HTTPS_PROXY no_proxy=$NO_PROXY"; '
        f"curl -sS --noproxy '*' --cacert ca.pem https://localhost:{https_port}/hello.txt "
        ">/dev/null 2>&1 && echo DIRECT-OK || echo DIRECT-REFUSED"
    )
    done = _run(tmp_path, policy, script, sandbox)
    shown = done.stdout + done.stderr  # what a failure below prints
    assert done.returncode == 0, shown
    assert "hello through the proxy" in done.stdout, shown
    assert "DENIED 56" in done.stdout, shown
    assert f"egress denied denied.example:{https_port} (rule airlock.default-deny)" in done.stderr
    assert "proxy=http://127.0.0.1:" in done.stdout and "no_proxy=127.0.0.1" in done.stdout
    # Outside a sandbox the proxy variables are advice; inside one, the proxy is the only way.
    assert ("DIRECT-REFUSED" if sandbox == "required" else "DIRECT-OK") in done.stdout, shown

    session, events = _events(tmp_path)
    [started] = [e["data"] for e in events if e["type"] == "gateway.started"]
    assert started["kind"] == "egress"
    assert started["allowlist"] == [f"local-site: localhost {https_port} (allow)"]
    net = [e["data"] for e in events if e["type"] == "net.connect"]
    # A tunnel is recorded when both its ends have closed, which may come after the next attempt.
    expected = [
        ("denied.example", "denied", "airlock.default-deny"),
        ("localhost", "allowed", "local-site"),
    ]
    if sandbox == "required":  # the sandbox's self-check tried a denied host through the proxy
        expected.insert(0, ("airlock-denied.invalid", "denied", "airlock.default-deny"))
    assert sorted((n["host"], n["outcome"], n["rule_id"]) for n in net) == expected

    show = subprocess.run(
        [AIRLOCK, "show", str(session)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "DENIED denied CONNECT denied.example" in show.stdout  # the shared describer
    summary = render_summary(session, {})
    denied = len(expected) - 1
    assert "#### Network" in summary and f"1 allowed, {denied} denied" in summary
    assert "denied CONNECT denied\\.example" in summary
