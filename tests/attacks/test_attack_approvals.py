"""Attacks on approvals that the earlier reviews did not name.

The console approver writes the held operation's text to the human's terminal. That text is
the agent's: a SQL comment may hold any character, terminal escapes included. Cursor-up and
erase-line sequences inside ``DROP TABLE users; -- …`` rewrite what the approver sees into a
harmless statement under a harmless rule; the approver answers ``y`` to what it saw.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.listener import Listener
from tests.support.terminal import read_until, terminal

from airlock.audit import SigningKey
from airlock.gate import ConsoleBackend, Operation, ask

__all__ = ["terminal"]  # the fixture

AIRLOCK = str(Path(sys.executable).parent / "airlock")

DISGUISE = (
    "DROP TABLE users; -- "
    "\x1b[1A\x1b[2K\r"  # up to the header line, erase it
    "airlock: approval needed (sql on gateway appdb, rule read-audit)\r\n"
    "\x1b[2K  SELECT count(*) FROM users"  # erase the statement line, write another
    "\u202e"  # and a right-to-left override for good measure
)


async def _prompted(master: int, backend: ConsoleBackend, op: Operation) -> bytes:
    task = asyncio.create_task(ask(backend, op, 10))
    prompt = await asyncio.to_thread(read_until, master, b"[y/N]")
    os.write(master, b"n\n")
    await task
    return prompt


def test_the_console_prompt_shows_the_agents_text_inert(terminal: tuple[int, str]) -> None:
    master, name = terminal
    backend = ConsoleBackend(key=SigningKey.generate(), tty=name)
    backend.poll_interval = 0.02
    op = Operation(kind="sql", text=DISGUISE, rule_id="no-drop", gateway="appdb")
    prompt = asyncio.run(_prompted(master, backend, op))
    assert b"DROP TABLE users" in prompt and b"rule no-drop" in prompt
    assert b"\x1b" not in prompt, prompt  # no escape sequence reaches the terminal
    assert "\u202e".encode() not in prompt
    assert b"\\x1b[1A" in prompt  # shown, as text, for the approver to see


# --------------------------------------------------------------- the file backend, in the sandbox

SELF_APPROVE = r"""
import glob, json, os, threading, time, urllib.request
proxy = os.environ.get("http_proxy") or os.environ.get("HTTP_PROXY")
opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
answer = {}
def fetch():
    try:
        answer["body"] = opener.open("http://localhost:%s/" % PORT, timeout=60).read().decode()
    except Exception as exc:
        answer["error"] = repr(exc)
thread = threading.Thread(target=fetch)
thread.start()
deadline = time.time() + 5
while time.time() < deadline and not glob.glob("approvals/requests/*.json"):
    time.sleep(0.05)
for path in glob.glob("approvals/requests/*.json"):
    try:
        request = json.load(open(path))
        os.makedirs("approvals/decisions", exist_ok=True)
        decision = {"request_id": request["request_id"], "operation_hash": request["operation_hash"],
                    "approved": True, "by": "a-trusted-human", "reason": "", "at": "2026-01-01T00:00:00Z"}
        json.dump(decision, open("approvals/decisions/%s.json" % request["request_id"], "w"))
        print("self-approved")
    except OSError as exc:
        print("could not approve:", exc)
thread.join()
print("answer:", answer)
"""


def test_the_agent_cannot_answer_its_own_request_in_the_file_backend(tmp_path: Path) -> None:
    """``approvals: {backend: file, dir: approvals}`` in the workspace: the request file holds
    the operation hash, and a decision file is all it takes to approve. The agent, inside the
    sandbox, must not be able to write one (nor read the requests)."""
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    workspace = tmp_path / "ws"
    (workspace / "approvals").mkdir(parents=True)
    site = Listener()
    try:
        (tmp_path / "airlock.yaml").write_text(
            "approvals: {backend: file, dir: approvals, timeout: 5s}\n"
            "network:\n  allow:\n"
            f"    - {{id: local-site, host: localhost, ports: [{site.port}], "
            "local_addresses: true, action: require_approval}\n"
        )
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI_", "GITLAB"))
        }
        env["XDG_CONFIG_HOME"] = str(tmp_path / "cfg")
        script = SELF_APPROVE.replace("PORT", str(site.port))
        result = subprocess.run(
            [AIRLOCK, "run", "--policy", str(tmp_path / "airlock.yaml"), "--pty", "never",
             "--sandbox", "required", "--", "/usr/bin/python3", "-c", script],
            cwd=workspace, env=env, capture_output=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        site.close()
    assert b"answer:" in result.stdout, result.stderr
    assert site.hits == 0, result.stdout  # the held request never reached the site
    assert b"self-approved" not in result.stdout
