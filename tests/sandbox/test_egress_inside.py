"""The egress proxy from inside the sandbox: the agent's curl reaches an allowed host only
through the bridged proxy, a direct connection fails, a denied host is refused and recorded, and
the self-check's proxy probe ran."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.egress.servers import serve
from tests.support.tls_ca import LocalCA

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap missing")
AIRLOCK = str(Path(sys.executable).parent / "airlock")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return LocalCA.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def https_port(ca: LocalCA, tmp_path: Path) -> Iterator[int]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "hello.txt").write_text("hello through the proxy\n")
    with serve(directory=site, tls=ca.server_context(["localhost"])) as server:
        yield server.server_address[1]


def test_the_agent_reaches_the_network_only_through_the_proxy(
    tmp_path: Path, ca: LocalCA, https_port: int
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    shutil.copy(ca.path, workspace / "ca.pem")
    policy = tmp_path / "airlock.yaml"
    policy.write_text(
        "network:\n"
        f"  allow: [{{id: local-site, host: localhost, ports: [{https_port}], "
        "local_addresses: true}]\n"
    )
    url = f"https://localhost:{https_port}/hello.txt"
    script = (
        f"curl -sS --cacert ca.pem {url}; "
        f"curl -sS --noproxy '*' --cacert ca.pem {url} || echo DIRECT-FAILED; "
        f"curl -sS --cacert ca.pem https://denied.example:{https_port}/ || echo DENIED"
    )
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "cfg")
    done = subprocess.run(
        [AIRLOCK, "run", "--policy", str(policy), "--sandbox", "required", "--pty", "never",
         "--", "sh", "-c", script],
        cwd=workspace, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "hello through the proxy" in done.stdout
    assert "DIRECT-FAILED" in done.stdout and "DENIED" in done.stdout
    [session] = list((workspace / ".airlock" / "sessions").iterdir())
    lines = (session / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    net = [(e["data"]["host"], e["data"]["outcome"]) for e in events if e["type"] == "net.connect"]
    assert ("localhost", "allowed") in net and ("denied.example", "denied") in net
    status = next(e["data"] for e in events if e["type"] == "sandbox.status")
    probes = {p["id"]: p["ok"] for p in status["probes"]}
    assert probes["net.proxy_denied"] is True
    assert all(probes.values()), status["probes"]


def test_an_http_gateway_is_bridged_into_the_sandbox(tmp_path: Path) -> None:
    """An HTTP gateway's address is a URL (``http://127.0.0.1:PORT``): the agent inside reaches
    it at the same address, with its ticket, while the held token stays outside."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "hello.txt").write_text("hello through the gateway\n")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    with serve(directory=site) as server:
        policy = tmp_path / "airlock.yaml"
        policy.write_text(
            "gateways:\n"
            "  - name: site\n"
            "    kind: http\n"
            "    listen: 127.0.0.1:0\n"
            f"    upstream: http://127.0.0.1:{server.server_address[1]}\n"
            "    credential: {env: {bearer: SITE_HELD_TOKEN}}\n"
        )
        script = (
            'echo "sees:${SITE_HELD_TOKEN:-none}"; '
            'curl -sS -H "Authorization: Bearer $SITE_TOKEN" "$SITE_URL/hello.txt"'
        )
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env.update({"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "SITE_HELD_TOKEN": "held-" * 6})
        done = subprocess.run(
            [AIRLOCK, "run", "--policy", str(policy), "--sandbox", "required", "--pty", "never",
             "--", "sh", "-c", script],
            cwd=workspace, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "sees:none" in done.stdout
    assert "hello through the gateway" in done.stdout
    [session] = list((workspace / ".airlock" / "sessions").iterdir())
    events = [json.loads(line) for line in (session / "events.jsonl").read_text().splitlines()]
    requests = [e["data"] for e in events if e["type"] == "http.request"]
    assert [r.get("path", r.get("url")) for r in requests] != []
