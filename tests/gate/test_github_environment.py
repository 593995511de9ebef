"""github-environment plan/apply: the agent's job plans, the reviewed apply job runs exactly that."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest

from airlock.audit import SigningKey
from airlock.gate import GateError, Operation, approver
from airlock.gate.github_environment import (
    PLANNED,
    Plan,
    PlanApplyBackend,
    PlanBackend,
    load_plan,
    plan_key,
)

BOUND = {"repository": "acme/api", "commit": "c" * 40, "run_id": "81"}


def _plan_in_agent_job(path: Path, texts: list[str]) -> list[bool]:
    backend = PlanBackend(path, key=SigningKey.generate())
    approve = approver(backend, 5, session_id="agent-session", **BOUND)
    return [asyncio.run(approve(Operation("sql", t, "no-drop", "appdb"))) for t in texts]


def test_the_agent_job_plans_and_nothing_runs_there(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    assert _plan_in_agent_job(path, ["DROP TABLE a", "DROP TABLE b"]) == [False, False]
    plan = load_plan(path)
    assert [op.text for op in plan.operations] == ["DROP TABLE a", "DROP TABLE b"]
    assert all(op.session_id == "agent-session" and op.run_id == "81" for op in plan.operations)
    assert plan.summary().startswith(f"apply plan {plan.plan_hash} (2 operations)")
    events: list[str] = []
    backend = PlanBackend(
        tmp_path / "p2.json", key=SigningKey.generate(), record=lambda t, _d: events.append(t)
    )
    rid = backend.request(Operation("sql", "DROP TABLE c", "no-drop"), timeout=5)
    assert backend.status(rid).reason == PLANNED  # type: ignore[union-attr]
    assert events == ["approval.requested", "approval.decided"]


def test_the_apply_job_runs_each_planned_operation_once_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    _plan_in_agent_job(path, ["DROP TABLE a", "DROP TABLE a", "DROP TABLE b"])
    plan = load_plan(path, expected_hash=load_plan(path).plan_hash)
    backend = PlanApplyBackend(plan, key=SigningKey.generate())
    approve = approver(backend, 5, session_id="apply-session", **BOUND)

    def run(text: str, **kw: str) -> bool:
        return asyncio.run(approve(Operation("sql", text, "no-drop", "appdb", **kw)))

    assert run("DROP TABLE a") and run("DROP TABLE a")
    assert not run("DROP TABLE a")  # planned twice, not three times
    assert not run("DROP TABLE users")  # never planned
    assert backend.unapplied() == 1
    other_run = approver(backend, 5, session_id="apply-session", **{**BOUND, "run_id": "99"})
    assert not asyncio.run(other_run(Operation("sql", "DROP TABLE b", "no-drop", "appdb")))
    assert run("DROP TABLE b") and backend.unapplied() == 0


def test_an_altered_or_unreviewed_plan_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    _plan_in_agent_job(path, ["DROP TABLE a"])
    reviewed = load_plan(path).plan_hash
    data = json.loads(path.read_text())
    data["operations"][0]["text"] = "DROP TABLE users"
    path.write_text(json.dumps(data))
    with pytest.raises(GateError, match="altered"):
        load_plan(path)
    data["plan_hash"] = _recomputed_hash(data)
    path.write_text(json.dumps(data))
    with pytest.raises(GateError, match="not the one the reviewers approved"):
        load_plan(path, expected_hash=reviewed)
    for junk in ("", "[]", '{"operations": [1]}'):
        path.write_text(junk)
        with pytest.raises(GateError):
            load_plan(path)


def _recomputed_hash(data: dict[str, object]) -> str:
    """The hash an attacker would recompute after editing the plan."""
    ops = [
        Operation.from_dict({k: v for k, v in op.items() if k != "key"})
        for op in data["operations"]
    ]  # type: ignore[attr-defined]
    return Plan(tuple(ops)).plan_hash


def test_plan_key_leaves_out_only_the_session() -> None:
    op = Operation("sql", "DROP TABLE a", "no-drop", "appdb", **BOUND, session_id="s1")
    assert plan_key(op) == plan_key(dataclasses.replace(op, session_id="s2"))
    assert plan_key(op) != plan_key(dataclasses.replace(op, commit="d" * 40))
    assert plan_key(op) != plan_key(dataclasses.replace(op, text="DROP TABLE b"))
