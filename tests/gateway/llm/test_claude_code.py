"""Claude Code's CLI (npm @anthropic-ai/claude-code) as a real agent under `airlock run`,
offline against the fake model server: its transcript lands in the session, it never sees the
key. The package is installed into .cache/npm-claude-code when missing (nothing goes into git).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.gateway.llm.fake_models import UPSTREAM_KEY, FakeModels, Reply

pytestmark = pytest.mark.service

AIRLOCK = str(Path(sys.executable).parent / "airlock")
ROOT = Path(__file__).resolve().parents[3]
_DIR = ROOT / ".cache" / "npm-claude-code"


def _claude() -> Path:
    path = _DIR / "node_modules" / ".bin" / "claude"
    if not path.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is needed for @anthropic-ai/claude-code")
        _DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent", "@anthropic-ai/claude-code"],
            cwd=_DIR, check=True, timeout=300,
        )  # fmt: skip
    return path


def test_claude_code_under_airlock_run(tmp_path: Path, models: FakeModels) -> None:
    claude = _claude()
    models.script = [Reply(text="PONG from the fake model") for _ in range(5)]
    policy = tmp_path / "airlock.yaml"
    policy.write_text(
        "gateways:\n"
        f"  - {{name: model, kind: llm, provider: anthropic, upstream: '{models.url}',\n"
        "     credential: {env: TEAM_MODEL_KEY}}\n"
    )
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "PYTHONPATH": f"{ROOT / 'core'}",
        "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
        "TEAM_MODEL_KEY": UPSTREAM_KEY,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    done = subprocess.run(
        [AIRLOCK, "run", "--policy", str(policy), "--sessions", str(tmp_path / "s"), "--",
         str(claude), "-p", "say pong", "--output-format", "json", "--model", "claude-test"],
        env=env, capture_output=True, text=True, timeout=180, check=False, cwd=home,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["result"] == "PONG from the fake model"
    assert models.seen and all(s["headers"]["x-api-key"] == UPSTREAM_KEY for s in models.seen)
    [session] = list((tmp_path / "s").iterdir())
    log = (session / "events.jsonl").read_text()
    events = [json.loads(line) for line in log.splitlines()]
    requests = [e["data"] for e in events if e["type"] == "llm.request" and "messages" in e["data"]]
    assert any("say pong" in json.dumps(r["messages"]) for r in requests)
    responses = [e["data"] for e in events if e["type"] == "llm.response"]
    assert any(r.get("text") == "PONG from the fake model" for r in responses)
    assert UPSTREAM_KEY not in log and UPSTREAM_KEY not in done.stdout + done.stderr
