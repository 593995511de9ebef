"""`airlock run` with a network: section: the proxy starts, the agent's curl goes through it
(HTTPS_PROXY set by Airlock), allowed and denied attempts are net.connect events, and `airlock
show` and the job summary show the denial."""

from __future__ import annotations

import json
import os
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


def _run(tmp_path: Path, policy: str, script: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "airlock.yaml"
    path.write_text(policy)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "cfg")
    return subprocess.run(
        [AIRLOCK, "run", "--policy", str(path), "--sessions", str(tmp_path / "s"), "--",
         "sh", "-c", script],
        env=env, capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip


def _events(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    [session] = list((tmp_path / "s").iterdir())
    lines = (session / "events.jsonl").read_text().splitlines()
    return session, [json.loads(line) for line in lines]


def test_run_routes_the_agent_through_the_proxy(
    tmp_path: Path, ca: LocalCA, https_port: int
) -> None:
    policy = (
        "capture: {exec: best_effort}\n"
        "network:\n"
        f"  allow: [{{id: local-site, host: localhost, ports: [{https_port}], "
        "local_addresses: true}]\n"
    )
    script = (
        f"curl -sS --cacert {ca.path} https://localhost:{https_port}/hello.txt; "
        f"curl -sS --cacert {ca.path} https://denied.example:{https_port}/ || echo DENIED $?; "
        'echo "proxy=$HTTPS_PROXY no_proxy=$NO_PROXY"'
    )
    done = _run(tmp_path, policy, script)
    assert done.returncode == 0, done.stderr
    assert "hello through the proxy" in done.stdout
    assert "DENIED 56" in done.stdout
    assert "proxy=http://127.0.0.1:" in done.stdout and "no_proxy=127.0.0.1" in done.stdout

    session, events = _events(tmp_path)
    [started] = [e["data"] for e in events if e["type"] == "gateway.started"]
    assert started["kind"] == "egress"
    assert started["allowlist"] == [f"local-site: localhost {https_port} (allow)"]
    net = [e["data"] for e in events if e["type"] == "net.connect"]
    assert [(n["host"], n["outcome"], n["rule_id"]) for n in net] == [
        ("localhost", "allowed", "local-site"),
        ("denied.example", "denied", "airlock.default-deny"),
    ]

    shown = subprocess.run(
        [AIRLOCK, "show", str(session)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "DENIED denied CONNECT denied.example" in shown.stdout  # the shared describer
    summary = render_summary(session, {})
    assert "#### Network" in summary and "1 allowed, 1 denied" in summary
    assert "denied CONNECT denied\\.example" in summary
