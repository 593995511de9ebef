"""`airlock mcp -- SERVER`: the official MCP SDK's client through the gateway to real servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

from airlock.audit import iter_events

pytestmark = pytest.mark.service

HERE = Path(__file__).parent
CORE = Path(__file__).parents[3] / "core"
SECRET = "ghp_" + "ToolResultSecret0123" * 2
HELD = "held-mcp-token-" + "k" * 24

POLICY = """
gateways:
  - name: tools
    kind: mcp
    command: [placeholder]
    credential: {env: [TEST_MCP_TOKEN]}
    tool_rules:
      - {id: no-delete, tool: delete_*, action: deny}
      - {id: no-drop, tool: run_sql, arguments: {sql: "(?i)drop"}, action: deny}
mask:
  env: []
"""


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": f"{CORE}{os.pathsep}{Path(__file__).parents[3]}",
        "AIRLOCK_SESSIONS": str(tmp_path / "sessions"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "TEST_MCP_TOKEN": HELD,
    }


def _params(tmp_path: Path, server: list[str], policy: bool = True) -> StdioServerParameters:
    args = ["-m", "airlock._cli", "mcp"]
    if policy:
        path = tmp_path / "airlock.yaml"
        path.write_text(POLICY)
        args += ["--policy", str(path)]
    return StdioServerParameters(
        command=sys.executable, args=[*args, "--", *server], env=_env(tmp_path)
    )


def _session_events(tmp_path: Path) -> list[dict[str, Any]]:
    (session,) = [p for p in (tmp_path / "sessions").iterdir() if p.is_dir()]
    return list(iter_events(session))


def test_sdk_client_through_the_gateway(tmp_path: Path) -> None:
    server = [sys.executable, str(HERE / "mcp_server.py")]

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with Client(_params(tmp_path, server)) as client:
            out["tools"] = sorted(t.name for t in (await client.list_tools()).tools)
            out["add"] = (await client.call_tool("add", {"a": 2, "b": 3})).structured_content
            out["sql"] = (await client.call_tool("run_sql", {"sql": "select 1"})).content[0]
            with pytest.raises(MCPError, match="no-drop"):
                await client.call_tool("run_sql", {"sql": "DROP TABLE users"})
            with pytest.raises(MCPError, match="no-delete"):
                await client.call_tool("delete_file", {"path": "/etc/passwd"})
            out["secret"] = (await client.call_tool("read_config", {})).content[0].text
            out["resource"] = (await client.read_resource("config://app")).contents[0].text
        return out

    out = anyio.run(main)
    assert "delete_file" not in out["tools"] and "add" in out["tools"]
    assert "run_sql" in out["tools"]  # denied only for some arguments: still offered
    assert out["add"] == {"result": 5}
    assert out["resource"] == "setting=1"
    assert HELD not in out["secret"]  # the server's held credential never reaches the agent
    events = _session_events(tmp_path)
    calls = [e["data"] for e in events if e["type"] == "mcp.request"]
    assert [(c.get("tool"), c.get("action")) for c in calls if c["method"] == "tools/call"] == [
        ("add", "allow"),
        ("run_sql", "allow"),
        ("run_sql", "deny"),
        ("delete_file", "deny"),
        ("read_config", "allow"),
    ]
    assert any(c["method"] == "resources/read" and c["uri"] == "config://app" for c in calls)
    results = [e["data"] for e in events if e["type"] == "mcp.response" and e["data"].get("tool")]
    assert results[0]["tool"] == "add" and results[0]["duration_ms"] >= 0
    log = "\n".join(json.dumps(e) for e in events)
    assert SECRET not in log and HELD not in log
    assert "[MASKED:" in log


def test_bad_servers_give_protocol_errors_and_the_session_goes_on(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airlock._cli",
            "mcp",
            "--",
            sys.executable,
            str(HERE / "raw_server.py"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_env(tmp_path),
    )
    assert proc.stdin is not None and proc.stdout is not None

    def call(request_id: Any, name: str, **arguments: Any) -> dict[str, Any]:
        message = {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": name, "arguments": arguments},
        }
        proc.stdin.write(json.dumps(message).encode() + b"\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        return dict(json.loads(proc.stdout.readline()))  # type: ignore[union-attr]

    try:
        assert call(1, "fine")["result"]["content"][0]["text"] == "ok fine"
        assert "invalid answer" in call(2, "invalid")["error"]["message"]
        proc.stdin.write(b"{not json\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline())["error"]["code"] == -32700
        too_big = call(3, "huge", n=100 * 1024 * 1024)
        assert too_big["id"] == 3 and "over the gateway's limit" in too_big["error"]["message"]
        assert call(4, "fine")["result"]["content"][0]["text"] == "ok fine"
        exited = call(5, "exit")
        assert exited["id"] == 5 and "exited (status 7)" in exited["error"]["message"]
        assert "exited" in call(6, "fine")["error"]["message"]
    finally:
        proc.stdin.close()
        assert proc.wait(30) == 0
        proc.stdout.close()
    errors = [
        e["data"].get("error") for e in _session_events(tmp_path) if e["type"] == "mcp.response"
    ]
    assert "answer too large" in errors and "server exited" in errors


def test_approval_flow_binds_one_call_with_its_arguments(tmp_path: Path) -> None:
    from airlock.gate.file import decide, pending

    approvals = tmp_path / "approvals"
    policy = tmp_path / "airlock.yaml"
    policy.write_text(
        "gateways:\n"
        "  - {name: tools, kind: mcp, command: [x],\n"
        "     tool_rules: [{id: delete-needs-ok, tool: delete_file, action: require_approval}]}\n"
        f"approvals: {{backend: file, dir: '{approvals}', timeout: 60s}}\n"
    )
    server = [sys.executable, str(HERE / "mcp_server.py")]
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "airlock._cli", "mcp", "--policy", str(policy), "--", *server],
        env=_env(tmp_path),
    )
    asked: list[dict[str, Any]] = []

    async def decider() -> None:
        for approve in (True, False):
            while not (found := list(pending(approvals))):
                await anyio.sleep(0.05)
            asked.append(found[0])
            decide(approvals, found[0]["request_id"], approved=approve, by="reviewer")

    async def main() -> str:
        async with Client(params) as client, anyio.create_task_group() as tg:
            tg.start_soon(decider)
            done = await client.call_tool("delete_file", {"path": "/tmp/a"})
            with pytest.raises(MCPError, match="not approved"):
                await client.call_tool("delete_file", {"path": "/tmp/b"})
            return str(done.content[0].text)

    assert anyio.run(main) == "deleted /tmp/a"
    texts = [a["operation"]["text"] for a in asked]
    assert texts == ['delete_file {"path": "/tmp/a"}', 'delete_file {"path": "/tmp/b"}']
    assert asked[0]["operation_hash"] != asked[1]["operation_hash"]
    assert all(a["operation"]["kind"] == "tool" for a in asked)
    types = [e["type"] for e in _session_events(tmp_path)]
    assert types.count("approval.decided") == 2


def test_a_server_that_cannot_start_is_a_config_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "airlock._cli", "mcp", "--", str(tmp_path / "no-such-server")],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=_env(tmp_path), timeout=60,
    )  # fmt: skip
    assert done.returncode == 80
    assert "cannot start the MCP server" in done.stderr and "Traceback" not in done.stderr


def test_shaped_messages_never_reach_the_server_over_stdio(tmp_path: Path) -> None:
    """What the server reads is written to a file by `tee` in front of it: of six messages
    that each try to get `rm` past the rules, none arrives; the one plain call does."""
    seen = tmp_path / "server-read.jsonl"
    server = ["sh", "-c", f"tee {seen} | {sys.executable} {HERE / 'raw_server.py'}"]
    rm = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "delete_all"}}
    lines = [
        json.dumps(rm),  # a notification
        json.dumps({**rm, "id": None}),
        json.dumps([{**rm, "id": 1}]),  # a batch
        json.dumps({**rm, "id": 2, "method": "Tools/Call"}),
        json.dumps({**rm, "id": 3, "method": "tools/call\u200b"}),
        '{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"delete_all","name":"ok"}}',
        json.dumps({**rm, "id": 5, "params": {"name": "fine"}}),
    ]
    args = ["-m", "airlock._cli", "mcp", "--", *server]
    done = subprocess.run(
        [sys.executable, *args], input="\n".join(lines) + "\n", env=_env(tmp_path),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [a.get("error", {}).get("code") for a in answers] == [-32600] * 6 + [None], answers
    assert answers[-1]["result"]["content"][0]["text"] == "ok fine"
    assert [json.loads(line)["params"]["name"] for line in seen.read_text().splitlines()] == [
        "fine"
    ]
    refused = [e for e in _session_events(tmp_path) if "refused" in str(e["data"].get("error"))]
    assert len(refused) == 6
