"""`airlock run` does not take its policy from the code under review: under
pull_request_target, issue_comment and workflow_run a policy file needs a --policy-sha256 pin
(or the policy is inline); a pin that does not match the file's exact bytes is refused
everywhere. The real CLI in a subprocess; the attacker's moves are the test cases."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

AIRLOCK = str(Path(sys.executable).parent / "airlock")
# the base branch's policy: no uncontained agent, no direct database access
TRUSTED = "capture: {exec: best_effort}\nsandbox: {mode: off}\n"
# the pull request's edit: one byte more (a trailing space), same meaning to YAML
EDITED = TRUSTED + " "


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run(
    tmp_path: Path, *args: str, event: str | None = None, **env: str
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """`airlock run ARGS -- true` in tmp_path/work; (the process, its session's events or [])."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI_", "AIRLOCK"))}
    base["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    if event is not None:
        base.update({"GITHUB_ACTIONS": "true", "GITHUB_EVENT_NAME": event})
    sessions = tmp_path / "sessions"
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    done = subprocess.run(
        [AIRLOCK, "run", "--sessions", str(sessions), "--sandbox", "off", *args, "--", "true"],
        env={**base, **env},
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = sorted(sessions.iterdir()) if sessions.exists() else []
    if not found:
        return done, []
    lines = (found[-1] / "events.jsonl").read_text().splitlines()
    return done, [json.loads(line) for line in lines]


def _policy(tmp_path: Path, data: bytes, name: str = "airlock.yaml") -> Path:
    path = tmp_path / "work" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return path


def _refused(
    done: subprocess.CompletedProcess[str], events: list[dict[str, Any]], why: str
) -> None:
    assert done.returncode == 80, done.stderr
    assert why in done.stderr and "Traceback" not in done.stderr
    assert events == []  # nothing ran: no session


@pytest.mark.parametrize("event", ["pull_request_target", "issue_comment", "workflow_run"])
def test_a_workspace_policy_without_a_pin_is_refused_where_the_checkout_is_untrusted(
    tmp_path: Path, event: str
) -> None:
    _policy(tmp_path, EDITED.encode())
    done, events = run(tmp_path, "--policy", "airlock.yaml", event=event)
    _refused(done, events, "inline the policy or pin it with policy-sha256")
    assert f"runs on {event}" in done.stderr  # and why


def test_the_same_file_is_used_under_events_whose_workflow_the_pr_writes(tmp_path: Path) -> None:
    _policy(tmp_path, TRUSTED.encode())
    done, events = run(tmp_path, "--policy", "airlock.yaml", event="pull_request")
    assert done.returncode == 0, done.stderr
    assert events[0]["data"]["policy"]["origin"] == "path"


def test_require_policy_pin_refuses_an_unpinned_file_under_any_event(tmp_path: Path) -> None:
    _policy(tmp_path, TRUSTED.encode())
    done, events = run(
        tmp_path, "--policy", "airlock.yaml", event="workflow_dispatch",
        AIRLOCK_REQUIRE_POLICY_PIN="true",
    )  # fmt: skip
    _refused(done, events, "AIRLOCK_REQUIRE_POLICY_PIN is set")


def test_a_pinned_policy_is_used_and_recorded_as_pinned(tmp_path: Path) -> None:
    _policy(tmp_path, TRUSTED.encode())
    pin = _sha(TRUSTED.encode())
    done, events = run(
        tmp_path, "--policy", "airlock.yaml", event="pull_request_target",
        AIRLOCK_POLICY_SHA256=pin,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    recorded = events[0]["data"]["policy"]
    assert recorded["origin"] == "pinned" and recorded["source"] == "airlock.yaml"
    assert recorded["bytes_sha256"] == "sha256:" + pin
    assert recorded["sha256"].startswith("sha256:")  # the effective policy's digest, as before


@pytest.mark.parametrize("event", [None, "push", "pull_request_target"])
def test_a_pinned_policy_changed_by_one_byte_is_refused_under_every_event(
    tmp_path: Path, event: str | None
) -> None:
    _policy(tmp_path, EDITED.encode())
    done, events = run(
        tmp_path, "--policy", "airlock.yaml", "--policy-sha256", _sha(TRUSTED.encode()), event=event
    )
    _refused(done, events, "does not match its policy-sha256 pin")


def test_a_symlink_to_another_file_does_not_carry_the_pin(tmp_path: Path) -> None:
    """The PR replaces the pinned file by a symlink to a file of its own (or of the runner):
    the pin is checked over the bytes actually read through the link."""
    pin = _sha(TRUSTED.encode())
    _policy(tmp_path, EDITED.encode(), name="elsewhere.yaml")
    (tmp_path / "work" / "airlock.yaml").symlink_to("elsewhere.yaml")
    done, events = run(
        tmp_path, "--policy", "airlock.yaml", "--policy-sha256", pin, event="pull_request_target"
    )
    _refused(done, events, "does not match its policy-sha256 pin")


def test_the_pin_is_over_the_exact_bytes_crlf_is_another_file(tmp_path: Path) -> None:
    lf = TRUSTED.encode()
    crlf = lf.replace(b"\n", b"\r\n")
    _policy(tmp_path, crlf)
    done, events = run(tmp_path, "--policy", "airlock.yaml", "--policy-sha256", _sha(lf))
    _refused(done, events, "line endings included")
    done, events = run(tmp_path, "--policy", "airlock.yaml", "--policy-sha256", _sha(crlf))
    assert done.returncode == 0, done.stderr
    assert events[0]["data"]["policy"]["bytes_sha256"] == "sha256:" + _sha(crlf)


def test_an_inline_policy_is_accepted_where_a_file_is_not(tmp_path: Path) -> None:
    inline = "# from https://example.com//policies/\n" + TRUSTED  # kept byte for byte
    done, events = run(tmp_path, "--policy", inline, event="pull_request_target")
    assert done.returncode == 0, done.stderr
    recorded = events[0]["data"]["policy"]
    assert recorded["origin"] == "inline" and recorded["source"] == "inline"
    assert recorded["bytes_sha256"] == "sha256:" + _sha(inline.encode())


def test_an_inline_policy_takes_no_pin_and_a_bad_pin_is_a_usage_error(tmp_path: Path) -> None:
    done, events = run(tmp_path, "--policy", TRUSTED, "--policy-sha256", _sha(TRUSTED.encode()))
    _refused(done, events, "an inline policy is part of the workflow")
    _policy(tmp_path, TRUSTED.encode())
    done, events = run(tmp_path, "--policy", "airlock.yaml", "--policy-sha256", "abc")
    _refused(done, events, "must be the 64 hex digits")


@pytest.mark.parametrize(
    "argv",
    [
        ["gateway", "--policy", "airlock.yaml"],
        ["mcp", "--policy", "airlock.yaml", "--", "true"],
        ["gate", "request", "--policy", "airlock.yaml", "--backend", "file", "--operation", "x"],
    ],
    ids=["gateway", "mcp", "gate"],
)
def test_the_other_commands_that_read_a_policy_refuse_it_too(
    tmp_path: Path, argv: list[str]
) -> None:
    _policy(tmp_path, TRUSTED.encode())
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "CI_", "AIRLOCK"))}
    done = subprocess.run(
        [AIRLOCK, *argv],
        env={
            **base,
            "XDG_CONFIG_HOME": str(tmp_path / "config"),
            "GITHUB_EVENT_NAME": "workflow_run",
        },
        cwd=tmp_path / "work",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 80, done.stderr
    assert "inline the policy or pin it with policy-sha256" in done.stderr
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["airlock.yaml"]  # no state
