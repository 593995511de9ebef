"""Bad inputs to every action are refused before anything starts: exit 80, an ``::error::``
annotation naming the input and the fix, no session, lease or approval.

The composite actions' steps run here as the runner runs them — each step's ``run:`` under
``bash --noprofile --norc -eo pipefail`` with its ``env:`` evaluated from the inputs (declared
defaults filled in) — up to the first failing step; the install step is replaced by this
interpreter. The root action's main step is covered by tests/actions/test_actions_inputs.py; the
session action (JavaScript) is run through its Python main step below.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.actions.helpers import REPO, Runner

_EXPR = re.compile(r"\$\{\{\s*([^}]+?)\s*\}\}")


def _steps(action: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    spec = yaml.safe_load((REPO / "actions" / action / "action.yml").read_text())
    assert spec["runs"]["using"] == "composite"
    return spec["inputs"], spec["runs"]["steps"]


def _value(expr: str, inputs: dict[str, str], action_path: Path) -> str:
    if expr.startswith("inputs."):
        return inputs.get(expr[len("inputs.") :], "")
    if expr == "steps.install.outputs.python":
        return sys.executable
    if expr == "github.action_path":
        return str(action_path)
    raise AssertionError(f"no value for ${{{{ {expr} }}}} in this test runner")


def _run_step(
    runner: Runner,
    step: dict[str, Any],
    inputs: dict[str, str],
    extra: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """One composite step as the runner runs it: its env evaluated, its script under bash."""
    env = {
        k: _EXPR.sub(lambda m: _value(m.group(1), inputs, REPO), str(v))
        for k, v in (step.get("env") or {}).items()
    }
    assert "${{" not in step["run"]  # never an expression inside a script
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        env=runner.env({**env, "GITHUB_WORKSPACE": str(runner.root / "work"), **(extra or {})}),
        cwd=runner.root / "work",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _inputs(action: str, given: dict[str, str]) -> dict[str, str]:
    declared, _ = _steps(action)
    return {**{name: str(spec.get("default", "")) for name, spec in declared.items()}, **given}


def run_composite(
    runner: Runner, action: str, given: dict[str, str], extra: dict[str, str] | None = None
) -> tuple[int, str, str, list[str]]:
    """(exit status, stdout, stderr, names of the steps that ran) up to the first failure;
    ``extra``: more of the runner's environment (GITHUB_EVENT_NAME, …)."""
    inputs = _inputs(action, given)
    ran: list[str] = []
    out = err = ""
    for step in _steps(action)[1]:
        if step.get("id") == "install":
            continue
        done = _run_step(runner, step, inputs, extra)
        ran.append(step["name"])
        out, err = out + done.stdout, err + done.stderr
        if done.returncode != 0:
            return done.returncode, out, err, ran
    return 0, out, err, ran


BAD = [
    ("run", {"command": ""}, "input command is required"),
    ("run", {"working-directory": "no/such/dir"}, "input working-directory 'no/such/dir'"),
    ("run", {"sandbox": "maybe"}, "input sandbox must be one of required, best_effort, off"),
    ("run", {"policy": "missing.yaml"}, "input policy 'missing.yaml' is not a file"),
    ("run", {"broker-url": "ftp://b"}, "input broker-url must be an http(s):// URL"),
    ("gate", {"timeout": "ten minutes"}, "input timeout must be a duration"),
    ("gate", {"backend": "email"}, "input backend must be one of"),
    ("gate", {"kind": "shell"}, "input kind must be one of command, sql, http"),
    ("gate", {"operation": ""}, "input operation is required"),
    ("credentials", {"broker-url": ""}, "input broker-url is required"),
    ("credentials", {"broker-url": "https://b", "grants": "ok bad;name"}, "'bad;name'"),
    ("archive", {"retention-days": "a year"}, "input retention-days must be a whole number"),
    ("archive", {"revoke": "maybe"}, "input revoke must be true or false"),
    ("archive", {"fail-mode": "sometimes"}, "input fail-mode must be one of closed, open"),
    ("verify", {"path": ""}, "input path is required"),
    ("verify", {"path": "s", "allow-incomplete": "perhaps"}, "input allow-incomplete must be"),
]


@pytest.mark.parametrize(("action", "given", "named"), BAD, ids=[f"{a}-{n}" for a, _, n in BAD])
def test_a_bad_input_stops_the_action_at_its_check_step(
    runner: Runner, action: str, given: dict[str, str], named: str
) -> None:
    base = {"run": {"command": "echo hi"}, "gate": {"operation": "DROP TABLE t"}}
    status, out, err, ran = run_composite(runner, action, {**base.get(action, {}), **given})
    assert status == 80, err
    assert ran == ["Check the inputs"]  # nothing after it ran: no session, lease or approval
    (annotation,) = [line for line in out.splitlines() if line.startswith("::error")]
    assert annotation.startswith("::error title=Airlock::") and named in annotation
    assert "%0A  hint: " in annotation  # and what to do about it
    assert "Traceback" not in err
    assert not (runner.root / "temp" / "airlock").exists()


@pytest.mark.parametrize("action", ["run", "gate", "credentials", "archive", "verify"])
def test_the_declared_defaults_pass_the_check(runner: Runner, action: str) -> None:
    """The check step itself accepts what the action declares as defaults."""
    (check,) = [s for s in _steps(action)[1] if s["name"] == "Check the inputs"]
    required = {"command": "x", "operation": "x", "broker-url": "https://b", "path": "s"}
    done = _run_step(runner, check, _inputs(action, required))
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("inputs", "named"),
    [
        ({"phase": "middle"}, "input phase must be start or stop"),
        ({"record-scripts": "sometimes"}, "input record-scripts must be true or false"),
        ({"grants": "deploy"}, "input grants is asked of the broker: set broker-url too"),
        ({"recordscripts": "true"}, "unknown input(s) recordscripts for this action"),
    ],
)
def test_the_session_action_refuses_bad_inputs_before_it_starts(
    runner: Runner, inputs: dict[str, str], named: str
) -> None:
    extra = {
        "AIRLOCK_ACTION_YML": str(REPO / "actions" / "session" / "action.yml"),
        **{f"INPUT_{k.upper()}": v for k, v in inputs.items()},
    }
    done = runner.ci("action", "session-main", extra=extra)
    assert done.returncode == 80, done.stderr
    (annotation,) = [line for line in done.stdout.splitlines() if line.startswith("::error")]
    assert named in annotation
    assert runner.read("state") == {}
