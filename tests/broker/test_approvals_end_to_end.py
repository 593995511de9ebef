"""End to end: a job exchanges its OIDC token, asks through the github-check backend, waits
(long-poll) while a reviewer clicks on GitHub, and the decision reaches the waiting side once."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.broker import approvals_support
from tests.broker.approvals_support import (
    AUDIENCE,
    FakeGitHub,
    FakeGitLab,
    WebhookSchemas,
    build_broker,
    check_run_click,
    github_headers,
    post,
)
from tests.support.broker_server import BrokerServer
from tests.support.oidc_issuer import OIDCIssuer

from airlock.audit import SigningKey
from airlock.broker.app import create_app
from airlock.broker.service import Broker
from airlock.brokerclient import BrokerClient
from airlock.gate import Operation, approver
from airlock.gate.broker import ForgeTarget
from airlock.gate.github_check import GitHubCheckBackend

forges = approvals_support.forges
github_openapi = approvals_support.github_openapi
webhook_schemas = approvals_support.webhook_schemas


@dataclass
class Job:
    broker: Broker
    server: BrokerServer
    github: FakeGitHub
    schemas: WebhookSchemas
    token: str
    claims: dict[str, Any]


@pytest.fixture
def job(
    issuer: OIDCIssuer,
    tmp_path: Path,
    forges: tuple[FakeGitHub, FakeGitLab],
    webhook_schemas: WebhookSchemas,
) -> Iterator[Job]:
    broker, store = build_broker(issuer.url, f"sqlite:///{tmp_path / 'broker.db'}")
    github = forges[0]
    github.add_pull(12, author="pr-author")
    github.permissions.update({"alice": "write", "bob": "write"})
    claims = issuer.github_claims(AUDIENCE)
    try:
        with BrokerServer(create_app(broker)) as server:
            client = BrokerClient(server.url)
            state = client.exchange(issuer.mint(claims), ["deploy"])
            client.close()
            yield Job(broker, server, github, webhook_schemas, state.job_token, claims)
    finally:
        broker.close()
        store.close()


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, type_: str, data: Any) -> None:
        self.events.append((type_, dict(data)))


def _click(job: Job, login: str, *, approve: bool = True) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while not job.github.check_runs:
        assert time.monotonic() < deadline, "the check run never appeared"
        time.sleep(0.02)
    (run_id, check) = next(iter(job.github.check_runs.items()))
    identifier = job.github.created_actions[run_id][0 if approve else 1]["identifier"]
    payload = check_run_click(
        job.schemas,
        check_run_id=run_id,
        external_id=check["external_id"],
        identifier=identifier,
        login=login,
    )
    raw = json.dumps(payload).encode()
    response = post(
        f"{job.server.url}/v1/webhooks/github", raw, github_headers(raw, event="check_run")
    )
    data: dict[str, Any] = response.json()
    return data


def _hold(
    job: Job, recorder: Recorder, key: SigningKey, timeout: float = 20
) -> tuple[GitHubCheckBackend, Any]:
    backend = GitHubCheckBackend(
        job.server.url, job.token, key=key, record=recorder, target=ForgeTarget(pull_request=12)
    )
    approve = approver(
        backend,
        timeout,
        repository=job.claims["repository"],
        commit=job.claims["sha"],
        run_id=job.claims["run_id"],
        session_id="sess-1",
    )
    return backend, approve


def _run_in_thread(coro: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        out["result"] = asyncio.run(coro)
        out["took"] = time.monotonic() - started

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_request_click_and_the_decision_reaches_the_waiting_side_once(job: Job) -> None:
    recorder, key = Recorder(), SigningKey.generate()
    backend, approve = _hold(job, recorder, key)
    op = Operation(kind="sql", text="DROP TABLE users", rule_id="no-drop", gateway="appdb")
    thread, out = _run_in_thread(approve(op))
    assert _click(job, "alice")["result"] == "approved"
    thread.join(timeout=30)
    assert out["result"] is True and out["took"] < 10
    assert _click(job, "bob")["result"] == "already-decided"  # a second click changes nothing
    types = [t for t, _ in recorder.events]
    assert types == ["approval.requested", "approval.posted", "approval.decided"]
    posted = recorder.events[1][1]
    assert posted["url"].startswith("https://github.com/acme/api/runs/")
    decided = recorder.events[2][1]
    assert decided["by"] == "github:alice" and decided["approved"] is True
    bound = recorder.events[0][1]["operation"]
    assert (bound["repository"], bound["commit"], bound["run_id"]) == (
        "acme/api",
        job.claims["sha"],
        job.claims["run_id"],
    )
    assert decided["operation_hash"] == recorder.events[0][1]["operation_hash"]
    assert decided["key_id"] == key.key_id  # the session's own signed record
    backend.close()
    assert job.github.errors == []


def test_deny_reaches_the_waiting_side_as_false(job: Job) -> None:
    recorder = Recorder()
    backend, approve = _hold(job, recorder, SigningKey.generate())
    thread, out = _run_in_thread(approve(Operation("sql", "TRUNCATE audit", "no-drop")))
    assert _click(job, "alice", approve=False)["result"] == "denied"
    thread.join(timeout=30)
    assert out["result"] is False
    assert recorder.events[-1][1]["reason"] == "denied in the check run"
    backend.close()


def test_nobody_answers_so_it_expires_to_a_denial(job: Job) -> None:
    recorder = Recorder()
    backend, approve = _hold(job, recorder, SigningKey.generate(), timeout=1.0)
    started = time.monotonic()
    assert asyncio.run(approve(Operation("sql", "DROP TABLE users", "no-drop"))) is False
    assert time.monotonic() - started < 5
    assert recorder.events[-1][0] == "approval.expired"
    backend.close()


def test_broker_gone_while_waiting_holds_until_the_deadline_then_denies(job: Job) -> None:
    recorder = Recorder()
    backend = GitHubCheckBackend(
        job.server.url,
        job.token,
        key=SigningKey.generate(),
        record=recorder,
        target=ForgeTarget(12),
    )
    rid = backend.request(Operation("sql", "DROP TABLE users", "no-drop"), timeout=2.0)
    job.server.__exit__(None, None, None)  # the broker goes away mid-wait
    decision = asyncio.run(backend.wait(rid, 2.0))
    assert decision.approved is False and decision.reason == "expired"
    assert "unreachable" in backend.last_error
    backend.close()
