"""HTTP guardrails through the gateway: a catalogue of rules and requests, deny, approval."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.gateway.http.conftest import GatewayFactory, Recorder

from airlock.audit import SigningKey
from airlock.gate import FileBackend, Operation, approver, decide, pending
from airlock.gateway.tickets import Ticket
from airlock.policy.guardrails import GuardrailDefaults

RULES: list[dict[str, Any]] = [
    {
        "id": "no-ns-delete",
        "http": {"methods": ["DELETE"], "path": "/api/v1/namespaces/*"},
        "action": "deny",
    },
    {
        "id": "force-delete",
        "http": {"methods": ["POST"], "path": "/api/v1/**", "json": {"spec.force": True}},
        "action": "deny",
    },
    {
        "id": "protect-push",
        "http": {"methods": ["POST"], "path": "/*/*/git-receive-pack"},
        "action": "require_approval",
    },
    {"id": "admin", "http": {"path": "/admin/**"}, "action": "deny"},
    {"id": "host-pin", "http": {"host": "evil.example", "methods": ["GET"]}, "action": "deny"},
    {
        "id": "read-ok",
        "http": {"methods": ["GET"], "path": "/api/v1/namespaces/*"},
        "action": "allow",
    },
    {"id": "get-body", "http": {"json": {"query.delete": True}}, "action": "deny"},
    {
        "id": "deploy-prod",
        "http": {"methods": ["POST"], "path": "/deploy", "json": {"env": "prod"}},
        "action": "require_approval",
    },
]

# (method, path, json body, expected status, rule id in the refusal or None)
CATALOGUE: list[tuple[str, str, Any, int, str | None]] = [
    ("DELETE", "/api/v1/namespaces/prod", None, 403, "no-ns-delete"),
    ("delete", "/api/v1/namespaces/prod", None, 403, "no-ns-delete"),
    ("DELETE", "/API/V1/NAMESPACES/prod", None, 403, "no-ns-delete"),
    ("DELETE", "/api/v1/namespaces/prod/", None, 403, "no-ns-delete"),  # trailing slash
    ("DELETE", "/api/v1/namespaces/prod//", None, 403, "no-ns-delete"),
    ("DELETE", "/api/v1%2Fnamespaces%2Fprod", None, 403, "no-ns-delete"),  # servers decode %2F
    ("DELETE", "/api/v1/namespaces%2fprod", None, 403, "no-ns-delete"),
    ("DELETE", "/api/v1/x%2F..%2Fnamespaces/prod", None, 403, "no-ns-delete"),
    ("DELETE", "/api/v1%5Cnamespaces%5Cprod", None, 403, "no-ns-delete"),  # and backslashes
    ("DELETE", "/api/v1/./namespaces/%70rod/", None, 403, "no-ns-delete"),
    ("DELETE", "/api/v1//namespaces/prod", None, 403, "no-ns-delete"),
    ("DELETE", "/api/v1/x/../namespaces/prod", None, 403, "no-ns-delete"),
    ("DELETE", "/api/v1/%6eamespaces/prod", None, 403, "no-ns-delete"),
    ("DELETE", "/api/v1/namespaces/%2e/prod", None, 403, "no-ns-delete"),
    ("DELETE", "/api/v1/namespaces/prod/pods/p1", None, 200, None),  # * never crosses /
    ("DELETE", "/api/v1/namespaces/a%2Fb", None, 403, "no-ns-delete"),  # %2F stays in its segment
    ("GET", "/api/v1/namespaces/prod", None, 200, None),
    ("POST", "/api/v1/namespaces/prod/finalize", {"spec": {"force": True}}, 403, "force-delete"),
    ("POST", "/api/v1/namespaces/prod/finalize", {"spec": {"force": False}}, 200, None),
    (
        "POST",
        "/api/v1/namespaces/prod/finalize",
        {"spec": {"force": 1}},
        200,
        None,
    ),  # 1 is not true
    ("POST", "/api/v1/namespaces/prod/finalize", {"spec": "force"}, 200, None),
    ("POST", "/api/v1/x", [1, 2], 200, None),
    ("GET", "/admin", None, 200, None),  # /admin/** needs a segment after /admin/
    ("GET", "/admin/users", None, 403, "admin"),
    ("PUT", "/admin/users/1/roles", {"r": 1}, 403, "admin"),
    ("GET", "/other", None, 200, None),
    ("GET", "/search", {"query": {"delete": True}}, 403, "get-body"),  # GET bodies are inspected
    ("GET", "/search", {"query": {"delete": False}}, 200, None),
]


def _auth(ticket: Ticket) -> dict[str, str]:
    return {"Authorization": f"Bearer {ticket.value}"}


@pytest.fixture
def guarded(make_gateway: GatewayFactory) -> Any:
    return make_gateway(rules=RULES)


@pytest.mark.parametrize(("method", "path", "body", "status", "rule"), CATALOGUE)
def test_catalogue(
    guarded: Any,
    ticket: Ticket,
    recorder: Recorder,
    method: str,
    path: str,
    body: Any,
    status: int,
    rule: str | None,
) -> None:
    with httpx.Client() as client:
        request = client.build_request(method, guarded.url, headers=_auth(ticket), json=body)
        request.url = request.url.copy_with(raw_path=path.encode())
        r = client.send(request)
    assert r.status_code == status, r.text
    if rule is not None:
        assert r.json()["rule_id"] == rule
        assert rule in r.json()["error"]
        decisions = recorder.of("guardrail.decision")
        assert decisions[-1]["rule_id"] == rule and decisions[-1]["action"] == "deny"
        assert recorder.of("http.response")[-1]["status"] == 403


def test_allow_rule_is_recorded_as_a_decision(
    guarded: Any, ticket: Ticket, recorder: Recorder
) -> None:
    httpx.get(f"{guarded.url}/api/v1/namespaces/prod", headers=_auth(ticket))
    assert recorder.of("guardrail.decision")[0] | {} == {
        "gateway": "api",
        "kind": "http",
        "id": "1",
        "rule_id": "read-ok",
        "action": "allow",
        "method": "GET",
        "path": "/api/v1/namespaces/prod",
    }


def test_unmatched_requests_leave_no_decision_event(
    guarded: Any, ticket: Ticket, recorder: Recorder
) -> None:
    httpx.get(f"{guarded.url}/other", headers=_auth(ticket))
    assert recorder.of("guardrail.decision") == []


def test_host_rule_matches_the_upstream_host(make_gateway: GatewayFactory, ticket: Ticket) -> None:
    gw = make_gateway(rules=[{"id": "local", "http": {"host": "127.0.0.*"}, "action": "deny"}])
    r = httpx.get(f"{gw.url}/x", headers={**_auth(ticket), "Host": "elsewhere.example"})
    assert r.status_code == 403 and r.json()["rule_id"] == "local"


def test_default_deny(make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder) -> None:
    gw = make_gateway(defaults=GuardrailDefaults(http_unmatched="deny"))
    r = httpx.get(f"{gw.url}/x", headers=_auth(ticket))
    assert r.status_code == 403 and r.json()["rule_id"] == "airlock.default.http_unmatched"
    assert recorder.of("guardrail.decision")[0]["action"] == "deny"


def test_json_rule_refuses_encoded_bodies(guarded: Any, ticket: Ticket) -> None:
    import gzip
    import json

    data = gzip.compress(json.dumps({"spec": {"force": True}}).encode())
    r = httpx.post(
        f"{guarded.url}/api/v1/x",
        headers={**_auth(ticket), "Content-Encoding": "gzip"},
        content=data,
    )
    assert r.status_code == 415


def test_json_rule_refuses_bodies_over_the_inspect_limit(
    make_gateway: GatewayFactory, ticket: Ticket
) -> None:
    from airlock.gateway.http import ProxySettings

    gw = make_gateway(rules=RULES, settings=ProxySettings(inspect_limit=1024))
    r = httpx.post(f"{gw.url}/api/v1/x", headers=_auth(ticket), content=b"{" + b" " * 4096 + b"}")
    assert r.status_code == 413
    r = httpx.post(f"{gw.url}/api/v1/x", headers=_auth(ticket), json={"small": True})
    assert r.status_code == 200


# ------------------------------------------------------------------------------ approvals


def _approve_with(answer: bool, seen: list[Operation]) -> Any:
    async def approve(op: Operation) -> bool:
        seen.append(op)
        return answer

    return approve


@pytest.mark.parametrize("answer", [True, False])
def test_require_approval_holds_then_forwards_or_refuses(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder, answer: bool
) -> None:
    seen: list[Operation] = []
    gw = make_gateway(rules=RULES, approve=_approve_with(answer, seen))
    r = httpx.post(f"{gw.url}/deploy?dry=0", headers=_auth(ticket), json={"env": "prod", "v": 2})
    assert len(seen) == 1
    op = seen[0]
    assert op.kind == "http" and op.rule_id == "deploy-prod" and op.gateway == "api"
    assert op.session_id == "session-1"
    assert op.text.startswith("POST /deploy?dry=0\nbody: ")
    assert '"env":"prod"' in op.text.replace(" ", "")
    if answer:
        assert r.status_code == 200 and r.json()["body_size"] > 0
    else:
        assert r.status_code == 403
        assert r.json()["rule_id"] == "deploy-prod" and "approval denied" in r.json()["error"]
    assert recorder.of("guardrail.decision")[0]["action"] == "require_approval"


def test_no_approver_means_refused(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    gw = make_gateway(rules=RULES, approve=None)
    r = httpx.post(f"{gw.url}/deploy", headers=_auth(ticket), json={"env": "prod"})
    assert r.status_code == 403
    assert "no approval backend" in recorder.of("http.response")[0]["approval"]


def test_held_request_end_to_end_with_the_file_backend(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder, tmp_path: Path
) -> None:
    """DELETE held → a human approves with `decide` → runs exactly once; a second is held again."""
    key = SigningKey.generate()
    backend = FileBackend(tmp_path, key=key, record=recorder)
    backend.poll_interval = 0.02
    approve = approver(
        backend, 20, repository="acme/api", commit="c" * 40, run_id="9", session_id="session-1"
    )
    rules = [{"id": "hold-delete", "http": {"methods": ["DELETE"]}, "action": "require_approval"}]
    gw = make_gateway(rules=rules, approve=approve)
    result: dict[str, httpx.Response] = {}

    def client() -> None:
        result["r"] = httpx.delete(f"{gw.url}/things/7", headers=_auth(ticket), timeout=30)

    thread = threading.Thread(target=client)
    thread.start()
    request = None
    for _ in range(500):
        found = list(pending(tmp_path))
        if found:
            request = found[0]
            break
        threading.Event().wait(0.01)
    assert request is not None, "the held request never reached the approval backend"
    assert request["operation"]["text"] == "DELETE /things/7"
    assert request["operation"]["repository"] == "acme/api"
    assert "r" not in result  # still held
    decide(tmp_path, str(request["request_id"]), approved=True, by="alice")
    thread.join(30)
    assert result["r"].status_code == 200 and result["r"].json()["method"] == "DELETE"
    types = [t for t, _ in recorder.events]
    assert (
        types.index("approval.requested")
        < types.index("approval.decided")
        < types.index("http.response")
    )
    decided = recorder.of("approval.decided")[0]
    assert decided["approved"] is True and decided["by"] == "alice"
    assert Operation(**request["operation"]).operation_hash() == decided["operation_hash"]


def test_unanswered_approval_expires_to_403(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder, tmp_path: Path
) -> None:
    backend = FileBackend(tmp_path, key=SigningKey.generate(), record=recorder)
    backend.poll_interval = 0.02
    rules = [{"id": "hold-delete", "http": {"methods": ["DELETE"]}, "action": "require_approval"}]
    gw = make_gateway(rules=rules, approve=approver(backend, 0.3))
    r = httpx.delete(f"{gw.url}/things/7", headers=_auth(ticket))
    assert r.status_code == 403 and r.json()["rule_id"] == "hold-delete"
    assert recorder.of("approval.expired")[0]["reason"] == "expired"


def test_held_requests_do_not_block_other_requests(
    make_gateway: GatewayFactory, ticket: Ticket
) -> None:
    release = asyncio.Event()

    async def slow_approve(op: Operation) -> bool:
        await asyncio.wait_for(release.wait(), 5)
        return True

    rules = [{"id": "hold", "http": {"methods": ["DELETE"]}, "action": "require_approval"}]
    gw = make_gateway(rules=rules, approve=slow_approve)
    holder = threading.Thread(
        target=lambda: httpx.delete(f"{gw.url}/x", headers=_auth(ticket), timeout=10)
    )
    holder.start()
    threading.Event().wait(0.2)
    assert httpx.get(f"{gw.url}/y", headers=_auth(ticket), timeout=3).status_code == 200
    gw._loop.call_soon_threadsafe(release.set)
    holder.join(10)
    assert not holder.is_alive()


def test_approver_that_raises_means_refused(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    async def broken(op: Operation) -> bool:
        raise RuntimeError("backend exploded")

    gw = make_gateway(rules=RULES, approve=broken)
    r = httpx.post(f"{gw.url}/deploy", headers=_auth(ticket), json={"env": "prod"})
    assert r.status_code == 403
    assert recorder.of("http.response")[0]["approval"] == "approval failed: RuntimeError"


def test_held_body_over_the_hold_limit_is_refused(
    make_gateway: GatewayFactory, ticket: Ticket
) -> None:
    from airlock.gateway.http import ProxySettings

    seen: list[Operation] = []
    gw = make_gateway(
        rules=[{"id": "hold", "http": {"methods": ["PUT"]}, "action": "require_approval"}],
        approve=_approve_with(True, seen),
        settings=ProxySettings(inspect_limit=1024, hold_limit=64 * 1024),
    )
    r = httpx.put(f"{gw.url}/blob", headers=_auth(ticket), content=b"z" * (65 * 1024))
    assert r.status_code == 413 and seen == []
    r = httpx.put(f"{gw.url}/blob", headers=_auth(ticket), content=b"z" * (60 * 1024))
    assert r.status_code == 200 and r.json()["body_size"] == 60 * 1024 and len(seen) == 1


def test_curl_delete_with_a_trailing_slash_is_held_like_the_path_without(
    make_gateway: GatewayFactory, ticket: Ticket, recorder: Recorder
) -> None:
    seen: list[Operation] = []
    rules = [
        {
            "id": "hold-items",
            "http": {"methods": ["DELETE"], "path": "/items/*"},
            "action": "require_approval",
        }
    ]
    gw = make_gateway(rules=rules, approve=_approve_with(False, seen))
    for path in ("/items/1/", "/items%2F1", "/items/1/."):
        out = subprocess.run(
            [
                "curl",
                "-sS",
                "-X",
                "DELETE",
                "--path-as-is",
                "-H",
                f"Authorization: Bearer {ticket.value}",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                gw.url + path,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert out.stdout == "403", path
    assert [op.rule_id for op in seen] == ["hold-items"] * 3
    assert recorder.of("guardrail.decision")[0]["action"] == "require_approval"


@pytest.mark.parametrize("header", ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"])
def test_a_method_override_header_is_judged_as_the_method_it_names(
    guarded: Any, ticket: Ticket, recorder: Recorder, header: str
) -> None:
    """Many frameworks run POST + X-HTTP-Method-Override: DELETE as the DELETE."""
    out = subprocess.run(
        ["curl", "-sS", "-X", "POST", "-H", f"Authorization: Bearer {ticket.value}",
         "-H", f"{header}: delete", guarded.url + "/api/v1/namespaces/prod"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout)["rule_id"] == "no-ns-delete"
    assert recorder.of("http.response")[-1]["status"] == 403
