"""Every output the steps write is declared, and every composite step has a name (the log's
title is otherwise the whole script)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from airlock._commands.ci.finalize import FinalizeResult, _outputs

REPO = Path(__file__).resolve().parents[2]
ACTIONS = [REPO / "action.yml", *sorted((REPO / "actions").glob("*/action.yml"))]
# the actions whose steps end with `airlock ci finalize` or `ci outputs`
FINALIZING = [
    "action.yml",
    "actions/run/action.yml",
    "actions/archive/action.yml",
    "actions/session/action.yml",
]


def _written_outputs() -> set[str]:
    result = FinalizeResult(sessions=[Path("/nonexistent/s")])
    return set(_outputs(result, "closed")) | set(_outputs(FinalizeResult(), "closed"))


@pytest.mark.parametrize("name", FINALIZING)
def test_every_written_output_is_declared(name: str) -> None:
    declared = set(yaml.safe_load((REPO / name).read_text())["outputs"])
    assert _written_outputs() - declared == set()
    # finalize on GitHub also writes the HTML report's path; `ci outputs` (actions/run) does not
    assert ("report-path" in declared) == (name != "actions/run/action.yml")


@pytest.mark.parametrize("path", ACTIONS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_composite_step_is_named(path: Path) -> None:
    runs = yaml.safe_load(path.read_text())["runs"]
    steps = runs.get("steps", [])
    assert [s for s in steps if not s.get("name")] == []


def test_the_gate_action_defaults_to_the_check_run_backend() -> None:
    inputs = yaml.safe_load((REPO / "actions/gate/action.yml").read_text())["inputs"]
    assert inputs["backend"]["default"] == "github-check"
