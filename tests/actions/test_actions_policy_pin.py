"""The actions do not take their policy from the code under review: under pull_request_target
(and issue_comment, workflow_run) a policy file from the checkout is refused unless the workflow
pins it with policy-sha256, before any session or lease starts; an inline policy runs.

actions/run's composite steps run as the runner runs them (test_actions_composite_inputs); the
root and session actions through their Python main steps, as their shim starts them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from tests.actions.helpers import REPO, Runner
from tests.actions.test_actions_composite_inputs import run_composite

POLICY = "capture: {exec: best_effort}\n"
UNTRUSTED = {"GITHUB_EVENT_NAME": "pull_request_target"}
REFUSED = "inline the policy or pin it with policy-sha256"


def _write(runner: Runner, data: bytes) -> None:
    (runner.root / "work" / "airlock.yaml").write_bytes(data)


def _annotation(stdout: str) -> str:
    (line,) = [line for line in stdout.splitlines() if line.startswith("::error")]
    return line


def _session_start(sessions: Path) -> dict[str, Any]:
    (session,) = [p for p in sessions.iterdir() if p.is_dir()]
    first = (session / "events.jsonl").read_text().splitlines()[0]
    start: dict[str, Any] = json.loads(first)
    assert start["type"] == "session.start"
    return start


def test_run_refuses_a_checkout_policy_under_pull_request_target(runner: Runner) -> None:
    _write(runner, POLICY.encode())
    given = {"command": "echo hi", "policy": "airlock.yaml", "sandbox": "off"}
    status, out, err, ran = run_composite(runner, "run", given, UNTRUSTED)
    assert status == 80, err
    assert ran == ["Check the inputs"]  # no session started
    assert REFUSED in _annotation(out) and "pull_request_target" in _annotation(out)
    assert not (runner.root / "temp" / "airlock").exists()


def test_run_refuses_a_pinned_policy_changed_by_one_byte(runner: Runner) -> None:
    _write(runner, POLICY.encode() + b"#")
    pin = hashlib.sha256(POLICY.encode()).hexdigest()
    given = {"command": "echo hi", "policy": "airlock.yaml", "policy-sha256": pin}
    status, out, err, ran = run_composite(runner, "run", given, {"GITHUB_EVENT_NAME": "push"})
    assert status == 80, err
    assert ran == ["Check the inputs"]
    assert "does not match its policy-sha256 pin" in _annotation(out)


@pytest.mark.parametrize("pinned", [False, True], ids=["inline", "pinned-file"])
def test_run_accepts_an_inline_or_pinned_policy_under_pull_request_target(
    runner: Runner, pinned: bool
) -> None:
    given = {"command": "echo hi", "sandbox": "off", "policy": POLICY}
    if pinned:
        _write(runner, POLICY.encode())
        given |= {
            "policy": "airlock.yaml",
            "policy-sha256": hashlib.sha256(POLICY.encode()).hexdigest(),
        }
    status, out, err, ran = run_composite(runner, "run", given, UNTRUSTED)
    assert status == 0, out + err
    assert ran[-1] == "Run the command inside an Airlock session"
    policy = _session_start(runner.root / "temp" / "airlock" / "sessions")["data"]["policy"]
    assert policy["origin"] == ("pinned" if pinned else "inline")


def _main(runner: Runner, step: str, action_yml: Path, **inputs: str) -> Any:
    extra = {
        **UNTRUSTED,
        "AIRLOCK_ACTION_YML": str(action_yml),
        **{f"INPUT_{k.upper()}": v for k, v in inputs.items()},
    }
    return runner.ci("action", step, extra=extra, timeout=120)


@pytest.mark.parametrize(
    ("phase", "action_yml", "inputs"),
    [
        ("main", REPO / "action.yml", {"command": "echo hi", "sandbox": "off"}),
        ("session-main", REPO / "actions" / "session" / "action.yml", {}),
    ],
    ids=["root", "session"],
)
def test_the_javascript_actions_refuse_a_checkout_policy_before_starting(
    runner: Runner, phase: str, action_yml: Path, inputs: dict[str, str]
) -> None:
    _write(runner, POLICY.encode())
    done = _main(runner, phase, action_yml, policy="airlock.yaml", **inputs)
    assert done.returncode == 80, done.stderr
    assert REFUSED in _annotation(done.stdout)
    assert runner.read("state") == {}  # nothing started: the post step has nothing to do


def test_the_root_action_runs_an_inline_policy_under_pull_request_target(runner: Runner) -> None:
    done = _main(
        runner, "main", REPO / "action.yml", command="echo hi", policy=POLICY, sandbox="off"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sessions = Path(runner.read("state")["sessions"])
    policy = _session_start(sessions)["data"]["policy"]
    assert policy["origin"] == "inline"
    assert policy["bytes_sha256"] == "sha256:" + hashlib.sha256(POLICY.encode()).hexdigest()


def test_the_session_action_records_with_an_inline_policy_under_pull_request_target(
    runner: Runner,
) -> None:
    """The bracket's recorder is another process: the inline policy reaches it intact."""
    yml = REPO / "actions" / "session" / "action.yml"
    inline = POLICY + "sandbox: {mode: off}\n"
    start = _main(runner, "session-main", yml, policy=inline)
    assert start.returncode == 0, start.stderr
    stop = _main(runner, "session-main", yml, policy=inline, phase="stop")
    assert stop.returncode == 0, stop.stderr
    (events,) = (runner.root / "temp").rglob("events.jsonl")
    policy = _session_start(events.parent.parent)["data"]["policy"]
    assert policy["origin"] == "inline"
    assert policy["bytes_sha256"] == "sha256:" + hashlib.sha256(inline.encode()).hexdigest()
