"""End to end through the HTTP gateway: the agent sends DELETE on a namespace, the gateway holds
it on a github-check approval at the broker, a reviewer clicks on GitHub, and the request reaches
the upstream exactly once — or gets 403 when denied."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
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
from airlock.brokerclient import BrokerClient
from airlock.gate import approver
from airlock.gate.broker import ForgeTarget
from airlock.gate.github_check import GitHubCheckBackend
from airlock.gateway.http.server import start_in_thread
from airlock.gateway.tickets import Ticket
from airlock.mask import Masker, MaskSettings
from airlock.policy.gateways import HttpGatewayConfig
from airlock.policy.guardrails import GuardrailDefaults, GuardrailRule

forges = approvals_support.forges
github_openapi = approvals_support.github_openapi
webhook_schemas = approvals_support.webhook_schemas


@pytest.fixture
def cluster_api() -> Iterator[tuple[str, list[str]]]:
    deleted: list[str] = []

    async def delete(request: Request) -> JSONResponse:
        deleted.append(request.path_params["name"])
        return JSONResponse({"status": "Success"})

    app = Starlette(routes=[Route("/api/v1/namespaces/{name}", delete, methods=["DELETE"])])
    with BrokerServer(app) as server:
        yield server.url, deleted


def _click(
    url: str, github: FakeGitHub, schemas: WebhookSchemas, *, approve: bool
) -> threading.Thread:
    def click() -> None:
        deadline = time.monotonic() + 20
        while not github.check_runs and time.monotonic() < deadline:
            time.sleep(0.02)
        run_id, check = next(iter(github.check_runs.items()))
        identifier = github.created_actions[run_id][0 if approve else 1]["identifier"]
        payload = check_run_click(
            schemas,
            check_run_id=run_id,
            external_id=check["external_id"],
            identifier=identifier,
            login="alice",
        )
        raw = json.dumps(payload).encode()
        post(f"{url}/v1/webhooks/github", raw, github_headers(raw, event="check_run"))

    thread = threading.Thread(target=click)
    thread.start()
    return thread


@pytest.mark.parametrize("approve", [True, False])
def test_namespace_delete_waits_for_the_click(
    approve: bool,
    issuer: OIDCIssuer,
    tmp_path: Path,
    forges: tuple[FakeGitHub, FakeGitLab],
    webhook_schemas: WebhookSchemas,
    cluster_api: tuple[str, list[str]],
) -> None:
    upstream_url, deleted = cluster_api
    broker, store = build_broker(issuer.url, f"sqlite:///{tmp_path / 'broker.db'}")
    github = forges[0]
    github.add_pull(12, author="pr-author")
    github.permissions["alice"] = "write"
    claims = issuer.github_claims(AUDIENCE)
    events: list[tuple[str, dict[str, Any]]] = []
    with BrokerServer(create_app(broker)) as server:
        client = BrokerClient(server.url)
        job = client.exchange(issuer.mint(claims), ["deploy"])
        client.close()
        backend = GitHubCheckBackend(
            server.url, job.job_token, key=SigningKey.generate(),
            record=lambda t, d: events.append((str(t), dict(d))), target=ForgeTarget(pull_request=12),
        )  # fmt: skip
        ticket = Ticket.issue("sess-http", "cluster")
        gateway = start_in_thread(
            HttpGatewayConfig.model_validate(
                {"name": "cluster", "kind": "http", "listen": "127.0.0.1:0", "upstream": upstream_url}
            ),
            masker=Masker(MaskSettings()),
            record=lambda t, d: events.append((str(t), dict(d))),
            approve=approver(backend, 30, repository="acme/api", commit=claims["sha"], run_id=claims["run_id"]),
            ticket=ticket,
            guardrails=[
                GuardrailRule.model_validate(
                    {"id": "ns-delete", "http": {"methods": ["DELETE"], "path": "/api/v1/namespaces/*"},
                     "action": "require_approval"}
                )
            ],
            defaults=GuardrailDefaults(),
        )  # fmt: skip
        try:
            clicker = _click(server.url, github, webhook_schemas, approve=approve)
            response = httpx.delete(
                f"{gateway.url}/api/v1/namespaces/prod",
                headers={"Authorization": f"Bearer {ticket.value}"},
                timeout=60,
            )
            clicker.join(timeout=30)
        finally:
            gateway.close()
            backend.close()
    broker.close()
    store.close()
    if approve:
        assert response.status_code == 200
        assert deleted == ["prod"]  # exactly once
    else:
        assert response.status_code == 403
        assert "ns-delete" in response.text
        assert deleted == []
    kinds = [t for t, _ in events]
    assert kinds.count("approval.requested") == 1
    assert kinds.count("approval.decided") == 1
