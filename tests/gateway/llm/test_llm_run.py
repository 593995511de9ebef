"""`airlock run` with a model gateway and an MCP gateway: a real agent process (the official SDKs)
whose transcript and tool calls land in the session, and which never sees the model key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.gateway.llm.fake_models import UPSTREAM_KEY, FakeModels

from airlock.archive.summary import render_summary

pytestmark = pytest.mark.service

AIRLOCK = str(Path(sys.executable).parent / "airlock")
HERE = Path(__file__).parent
ROOT = Path(__file__).parents[3]


def test_agent_under_airlock_run(tmp_path: Path, models: FakeModels) -> None:
    policy = tmp_path / "airlock.yaml"
    policy.write_text(
        f"""
gateways:
  - {{name: model, kind: llm, provider: anthropic, upstream: "{models.url}",
     credential: {{env: TEAM_MODEL_KEY}}}}
  - name: tools
    kind: mcp
    command: ["{sys.executable}", "{ROOT / "tests/gateway/mcp/mcp_server.py"}"]
    tool_rules: [{{id: no-delete, tool: delete_file, action: deny}}]
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI_"))}
    env.update(
        TEAM_MODEL_KEY=UPSTREAM_KEY,  # held by Airlock: never in the agent's environment
        XDG_CONFIG_HOME=str(tmp_path / "cfg"),
        PYTHONPATH=f"{ROOT / 'core'}{os.pathsep}{ROOT}",
    )
    done = subprocess.run(
        [AIRLOCK, "run", "--policy", str(policy), "--sessions", str(tmp_path / "s"), "--",
         sys.executable, str(HERE / "agent_script.py")],
        env=env, capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "destroyed" not in done.stderr
    seen = json.loads((tmp_path / "agent-env.json").read_text())
    assert UPSTREAM_KEY not in json.dumps(seen)  # the model key is not in the agent's env
    assert seen["ANTHROPIC_BASE_URL"].startswith("http://127.0.0.1:")
    assert "model: Hello from the fake model." in done.stdout
    assert "tools: add,big,crash,read_config,run_sql" in done.stdout  # delete_file not offered
    assert "add: {'result': 5}" in done.stdout
    assert models.seen[0]["headers"]["x-api-key"] == UPSTREAM_KEY
    [session] = list((tmp_path / "s").iterdir())
    log = (session / "events.jsonl").read_text()
    events: list[dict[str, Any]] = [json.loads(line) for line in log.splitlines()]
    types = [e["type"] for e in events]
    assert "llm.request" in types and "llm.response" in types
    assert [e["data"].get("tool") for e in events if e["type"] == "mcp.request"] == ["add"]
    assert UPSTREAM_KEY not in log and UPSTREAM_KEY not in done.stdout + done.stderr
    assert seen["ANTHROPIC_API_KEY"] not in log  # the ticket is masked too
    summary = render_summary(session, {})
    assert "Models: claude\\-test \\(1\\)" in summary
    assert "MCP tool calls: add 1" in summary
