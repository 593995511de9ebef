"""The published reference server @modelcontextprotocol/server-everything (npm) behind
`airlock mcp`, driven by the official MCP SDK's client: calls recorded, a denied tool refused.

The package is installed into .cache/npm-mcp-everything when missing (nothing goes into git).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError
from tests.gateway.mcp.test_mcp_stdio import _env, _session_events

pytestmark = pytest.mark.service

_DIR = Path(__file__).resolve().parents[3] / ".cache" / "npm-mcp-everything"
_ENTRY = "node_modules/@modelcontextprotocol/server-everything/dist/index.js"


def _server() -> Path:
    path = _DIR / _ENTRY
    if not path.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is needed for @modelcontextprotocol/server-everything")
        _DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent",
             "@modelcontextprotocol/server-everything"],
            cwd=_DIR, check=True, timeout=300,
        )  # fmt: skip
    return path


def test_reference_server_through_the_gateway(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node is not None, "node is needed (apt-get install -y nodejs)"
    policy = tmp_path / "airlock.yaml"
    policy.write_text(
        "gateways:\n  - {name: everything, kind: mcp, command: [x],\n"
        "     tool_rules: [{id: no-env, tool: get-env, action: deny}]}\n"
    )
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "airlock._cli", "mcp", "--policy", str(policy), "--", node,
              str(_server()), "stdio"],
        env=_env(tmp_path),
    )  # fmt: skip

    async def main() -> dict[str, Any]:
        async with Client(params) as client:
            names = [t.name for t in (await client.list_tools()).tools]
            echoed = await client.call_tool("echo", {"message": "hello through airlock"})
            total = await client.call_tool("get-sum", {"a": 2, "b": 40})
            with pytest.raises(MCPError, match="no-env"):
                await client.call_tool("get-env", {})
            return {"names": names, "echo": echoed.content[0].text, "sum": total.content[0].text}

    out = anyio.run(main)
    assert "get-env" not in out["names"] and "echo" in out["names"]
    assert "hello through airlock" in out["echo"] and "42" in out["sum"]
    events = _session_events(tmp_path)
    calls = [(e["data"]["tool"], e["data"]["action"]) for e in events
             if e["type"] == "mcp.request" and e["data"]["method"] == "tools/call"]  # fmt: skip
    assert calls == [("echo", "allow"), ("get-sum", "allow"), ("get-env", "deny")]
    answers = [e["data"] for e in events if e["type"] == "mcp.response" and e["data"].get("tool")]
    assert "hello through airlock" in str(answers[0]["result"])
