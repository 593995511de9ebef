"""The ``github-environment`` backend: plan in the agent's job, apply after an environment review.

    agent job     PlanBackend: every held operation is written to a plan file and refused now
                  ("planned"); the plan is uploaded as an artifact; its hash is a job output and
                  registered with the broker (GitHubEnvironmentBackend)
    apply job     ``environment: production`` with required reviewers: GitHub's own review UI;
                  the broker's custom deployment protection rule approves only a run that
                  registered a plan, and names the plan hash in the review comment
                  PlanApplyBackend: each operation in the plan is approved once, exactly as
                  planned; anything else — another text, repository, commit or run — is denied

The plan binds each operation to its text, rule, gateway, repository, commit and run; the session
id is left out because the apply job is another session. :func:`load_plan` refuses a file whose
content does not match its ``plan_hash``, or whose hash is not the one the reviewers saw.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from airlock.audit.keys import SigningKey
from airlock.gate.broker import BrokerBackend
from airlock.gate.interface import (
    Answer,
    ApprovalBackend,
    ApprovalRequest,
    GateError,
    Operation,
    Record,
)

__all__ = [
    "PLANNED",
    "GitHubEnvironmentBackend",
    "Plan",
    "PlanApplyBackend",
    "PlanBackend",
    "load_plan",
    "plan_key",
]

PLANNED = "planned: runs in the environment job once reviewers approve the plan"
_MAX_PLAN = 16 * 1024 * 1024


def plan_key(op: Operation) -> str:
    """SHA-256 of the operation without its session: what the apply job must match exactly."""
    unbound = dataclasses.replace(op, session_id=None)
    return unbound.operation_hash()


@dataclass(frozen=True)
class Plan:
    """The operations held in the agent's job, in order, and the hash over all of them."""

    operations: tuple[Operation, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(plan_key(op) for op in self.operations)

    @property
    def plan_hash(self) -> str:
        """SHA-256 over the ordered operation keys: what reviewers approve."""
        return hashlib.sha256("\n".join(self.keys).encode()).hexdigest()

    def to_json(self) -> str:
        body = {
            "version": 1,
            "plan_hash": self.plan_hash,
            "operations": [op.to_dict() | {"key": plan_key(op)} for op in self.operations],
        }
        return json.dumps(body, indent=2, sort_keys=True) + "\n"

    def summary(self) -> str:
        """One line per operation, for the broker registration and the job summary."""
        lines = [f"apply plan {self.plan_hash} ({len(self.operations)} operations)"]
        lines += [f"- [{op.rule_id}] {' '.join(op.text.split())[:120]}" for op in self.operations]
        return "\n".join(lines)


def load_plan(path: Path, *, expected_hash: str | None = None) -> Plan:
    """Read a plan file; GateError when it is malformed, altered, or not the reviewed one."""
    try:
        with Path(path).open("rb") as handle:
            raw = handle.read(_MAX_PLAN + 1)
        data = json.loads(raw) if len(raw) <= _MAX_PLAN else None
    except (OSError, ValueError) as exc:
        raise GateError(
            f"cannot read the plan {path}", hint="check --plan and the artifact"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("operations"), list):
        raise GateError(f"{path} is not an Airlock plan")
    plan = Plan(tuple(Operation.from_dict(_fields(item)) for item in data["operations"]))
    if data.get("plan_hash") != plan.plan_hash:
        raise GateError(f"the plan {path} was altered: its content does not match its hash")
    if expected_hash is not None and expected_hash != plan.plan_hash:
        raise GateError(
            f"the plan {path} is not the one the reviewers approved",
            hint="apply the plan artifact of the same run; its hash is the plan job's output",
        )
    return plan


def _fields(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise GateError("a plan entry is not an operation")
    return {k: v for k, v in item.items() if k != "key"}


class PlanBackend(ApprovalBackend):
    """Agent job: write each held operation to ``path`` and refuse it for now."""

    name: ClassVar[str] = "github-environment-plan"

    def __init__(self, path: Path, *, key: SigningKey, record: Record | None = None) -> None:
        super().__init__(key=key, record=record)
        self.path = Path(path)
        self._ops: list[Operation] = []
        self._plan_lock = threading.Lock()

    @property
    def plan(self) -> Plan:
        with self._plan_lock:
            return Plan(tuple(self._ops))

    def _submit(self, req: ApprovalRequest) -> None:
        with self._plan_lock:
            self._ops.append(req.operation)
            _write_atomically(self.path, Plan(tuple(self._ops)).to_json())

    def _fetch(self, req: ApprovalRequest) -> Answer | None:
        return Answer(False, "airlock", req.operation_hash, PLANNED)


class PlanApplyBackend(ApprovalBackend):
    """Apply job: approve each planned operation once; deny everything else."""

    name: ClassVar[str] = "github-environment-apply"

    def __init__(self, plan: Plan, *, key: SigningKey, record: Record | None = None) -> None:
        super().__init__(key=key, record=record)
        self._remaining = collections.Counter(plan.keys)
        self._plan_hash = plan.plan_hash
        self._answers: dict[str, Answer] = {}
        self._apply_lock = threading.Lock()

    def _submit(self, req: ApprovalRequest) -> None:
        key = plan_key(req.operation)
        with self._apply_lock:
            if self._remaining[key] > 0:
                self._remaining[key] -= 1
                by, approved = f"github-environment:plan:{self._plan_hash[:16]}", True
                reason = "in the reviewed plan"
            else:
                by, approved = "airlock", False
                reason = "refused: not in the reviewed plan (or already applied)"
            self._answers[req.request_id] = Answer(approved, by, req.operation_hash, reason)

    def _fetch(self, req: ApprovalRequest) -> Answer | None:
        with self._apply_lock:
            return self._answers.get(req.request_id)

    def unapplied(self) -> int:
        """How many planned operations have not been asked for (yet)."""
        with self._apply_lock:
            return sum(self._remaining.values())


class GitHubEnvironmentBackend(BrokerBackend):
    """Registers a plan with the broker, for its deployment protection rule to find by run."""

    name: ClassVar[str] = "github-environment"
    forge: ClassVar[str] = "github-environment"

    def register(self, plan: Plan, template: Operation, *, timeout: float) -> str:
        """Ask the broker to remember ``plan`` for this run; returns the request id."""
        op = dataclasses.replace(template, kind="command", text=plan.summary(), rule_id="plan")
        return self.request(op, timeout=timeout)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".plan-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        Path(tmp).replace(path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise GateError(f"could not write the plan {path}: {exc.strerror}") from exc
