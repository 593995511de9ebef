"""The one describer: every event type the recorder writes has an entry, and says what happened
with the fields the writers really use (docs/session-format.md, docs/approvals.md)."""

from __future__ import annotations

from typing import Any

import pytest

from airlock.audit.describe import DESCRIBERS, Describer, EventView, describes
from airlock.events import EventType

_OP = {"kind": "sql", "text": "DROP TABLE users", "rule_id": "no-drop", "gateway": "appdb"}
_REQUEST = {"request_id": "r1", "backend": "file", "operation": _OP, "operation_hash": "ab" * 32}

# type → (data as written, words the summary must hold, rule_id, outcome)
CASES: dict[str, tuple[dict[str, Any], tuple[str, ...], str | None, str | None]] = {
    "session.start": (
        {
            "identity": {
                "platform": "github",
                "repository": "acme/api",
                "run_id": "77",
                "actor": "octo",
            },
            "argv": ["claude", "-p", "fix it"],
        },
        ("github acme/api 77 by octo", "claude -p 'fix it'"),
        None,
        None,
    ),
    "session.end": (
        {"exit_status": 3, "duration_seconds": 1.5},
        ("exit 3", "duration_seconds=1.5"),
        None,
        None,
    ),
    "capture.status": (
        {"exec": "required", "tracer": "strace", "active": True, "detail": "ok"},
        ("exec=required", "tracer=strace", "active=true"),
        None,
        None,
    ),
    "process.exec": (
        {"pid": 42, "argv": ["git", "commit", "-m", "a b"]},
        ("[42] git commit -m 'a b'",),
        None,
        None,
    ),
    "process.exit": ({"pid": 42, "status": 1}, ("[42] exited 1",), None, None),
    "output": (
        {"stream": "stdout", "text": "hello [MASKED:env:X:ab12]\n"},
        ("stdout: hello [MASKED:env:X:ab12]",),
        None,
        None,
    ),
    "input": ({"stream": "stdin", "b64": "//79"}, ("stdin: <3 bytes, not UTF-8>",), None, None),
    "signal": ({"forwarded": "SIGTERM"}, ("forwarded SIGTERM",), None, None),
    "mask.registered": (
        {"rule_id": "env:TOKEN", "sha256": "cd" * 32},
        ("secret registered (cdcdcdcdcdcd)",),
        "env:TOKEN",
        None,
    ),
    "db.query": (
        {"connection": 1, "protocol": "simple", "sql": "DROP TABLE users", "kinds": ["drop"]},
        ("1: DROP TABLE users",),
        None,
        None,
    ),
    "db.result": (
        {
            "connection": 1,
            "query": 5,
            "rows": None,
            "error": {"sqlstate": "42501", "message": "denied"},
        },
        ("error 42501: denied",),
        None,
        "error",
    ),
    "http.request": (
        {
            "gateway": "forge",
            "method": "POST",
            "path": "/acme/api/git-receive-pack",
            "query": "a=1",
        },
        ("POST /acme/api/git-receive-pack?a=1",),
        None,
        None,
    ),
    "http.response": (
        {"gateway": "forge", "status": 403, "error": "refused by no-push", "duration_ms": 2.0},
        ("HTTP 403: refused by no-push",),
        None,
        None,
    ),
    "guardrail.decision": (
        {"connection": 1, "rule_id": "no-drop", "action": "deny", "sql": "DROP TABLE users"},
        ("no-drop: deny DROP TABLE users",),
        "no-drop",
        "deny",
    ),
    "approval.requested": (
        _REQUEST,
        ("no-drop: approval requested via file: sql DROP TABLE users",),
        "no-drop",
        "requested",
    ),
    "approval.posted": (
        {"request_id": "r1", "url": "https://github.com/acme/api/pull/1#c"},
        ("no-drop: approval request posted https://github.com/acme/api/pull/1#c",),
        "no-drop",
        None,
    ),
    "approval.decided": (
        {"request_id": "r1", "approved": False, "by": "4242", "reason": "not now", "at": "t"},
        ("no-drop: denied by 4242 (not now): sql DROP TABLE users",),
        "no-drop",
        "denied",
    ),
    "approval.expired": (
        {"request_id": "r1", "approved": False, "by": "airlock", "reason": "expired"},
        ("no-drop: expired by airlock",),
        "no-drop",
        "expired",
    ),
    "approval.cancelled": (
        {"connection": 1, "rule_id": "no-drop", "sql": "DROP TABLE users", "reason": "client left"},
        ("no-drop: approval cancelled: client left",),
        "no-drop",
        "cancelled",
    ),
    "llm.request": (
        {"model": "claude-x", "messages": [{"role": "user"}]},
        ("claude-x: 1 new message(s)",),
        None,
        None,
    ),
    "llm.response": (
        {
            "outcome": "forwarded",
            "text": "ok",
            "tool_calls": [{"name": "Bash"}],
            "usage": {"input_tokens": 9, "output_tokens": 2},
        },
        ("forwarded: ok → Bash (9/2 tok)",),
        None,
        "forwarded",
    ),
    "mcp.request": (
        {"method": "tools/call", "tool": "delete", "action": "deny", "rule_id": "no-delete"},
        ("tools/call delete [deny]",),
        "no-delete",
        "deny",
    ),
    "mcp.response": ({"tool": "add", "duration_ms": 1.5}, ("add: ok in 1.5 ms",), None, None),
    "net.connect": (
        {
            "kind": "connect",
            "host": "evil.example",
            "port": 443,
            "outcome": "denied",
            "rule_id": "airlock.default-deny",
        },
        ("denied CONNECT evil.example:443 (airlock.default-deny)",),
        "airlock.default-deny",
        "denied",
    ),
    "sandbox.status": (
        {
            "mode": "bwrap",
            "active": True,
            "probes": [{"id": "no-key", "ok": True}, {"id": "no-net", "ok": False}],
        },
        ("sandbox bwrap: active; 1/2 probes passed; failed: no-net",),
        None,
        None,
    ),
    "credential.issued": (
        {"grant": "appdb", "lease_id": "l1", "name": "PGPASSWORD", "sha256": "ef" * 32},
        ("appdb PGPASSWORD sha256 efefefefefef…",),
        None,
        None,
    ),
    "checkpoint": (
        {"seq": 9, "head": "12" * 32, "at": "t", "key_id": "ed25519:aa", "signature": "x"},
        ("line 9 (head 121212121212…) witnessed by ed25519:aa",),
        None,
        None,
    ),
    "gateway.started": (
        {"name": "appdb", "kind": "postgres", "address": "127.0.0.1:6432"},
        ("appdb (postgres) at 127.0.0.1:6432",),
        None,
        None,
    ),
    "airlock.error": (
        {"component": "gateway.postgres", "error": "upstream closed"},
        ("gateway.postgres: upstream closed",),
        None,
        "error",
    ),
}


def _view(type_: str, data: dict[str, Any]) -> EventView:
    describer = Describer()
    describer.view({"seq": 0, "type": "approval.requested", "data": _REQUEST})
    return describer.view({"seq": 1, "type": type_, "data": data})


def test_every_event_type_has_a_describer_and_a_case() -> None:
    types = {str(t) for t in EventType}
    assert types - set(DESCRIBERS) == set()
    assert types - set(CASES) == set()


@pytest.mark.parametrize("type_", sorted(CASES))
def test_each_type_is_described_from_the_fields_it_is_written_with(type_: str) -> None:
    data, words, rule_id, outcome = CASES[type_]
    view = _view(type_, data)
    for word in words:
        assert word in view.summary
    assert "?" not in view.summary.replace("?a=1", "")  # never "?: ?"
    assert (view.rule_id, view.outcome) == (rule_id, outcome)
    assert view.denied == (outcome in {"deny", "denied", "expired", "cancelled"})


def test_a_granted_approval_and_a_guardrail_after_approval() -> None:
    granted = _view("approval.decided", {"request_id": "r1", "approved": True, "by": "99"})
    assert (granted.outcome, granted.denied) == ("approved", False)
    assert granted.summary.startswith("no-drop: approved by 99")
    after = _view(
        "guardrail.decision", {"rule_id": "no-drop", "action": "deny", "approval": "denied"}
    )
    assert after.outcome == "denied" and "(approval denied)" in after.summary


def test_a_decision_without_its_request_still_says_what_it_knows() -> None:
    view = Describer().view(
        {"type": "approval.decided", "data": {"request_id": "zz", "approved": False, "by": "7"}}
    )
    assert view.summary == "no rule: denied by 7" and view.denied


def test_unknown_and_malformed_events_fall_back_to_their_json() -> None:
    describer = Describer()
    assert describer.view(
        {"type": "future.type", "data": {"host": "a", "decision": "deny"}}
    ).summary == ('{"host":"a","decision":"deny"}')
    assert describer.view({"type": "future.type", "data": {"decision": "deny"}}).denied
    assert describer.view({"type": "process.exec", "data": {"argv": 5}}).summary  # no raise
    assert describer.view({"type": "output", "data": "not an object"}).summary == "{}"


def test_a_new_type_is_one_registered_function() -> None:
    @describes("test.only")
    def _test_only(data: Any, _session: Any) -> Any:
        from airlock.audit.describe import Facts

        return Facts(f"to {data['host']}", rule_id="r", outcome="blocked")

    try:
        view = Describer().view({"type": "test.only", "data": {"host": "h"}})
        assert (view.summary, view.rule_id, view.denied) == ("to h", "r", True)
    finally:
        del DESCRIBERS["test.only"]


def test_plain_drops_terminal_escapes_and_summary_keeps_them_for_show() -> None:
    view = Describer().view(
        {"type": "output", "data": {"stream": "stdout", "text": "\x1b[31mred\x1b[0m"}}
    )
    assert view.summary == "stdout: \x1b[31mred\x1b[0m" and view.plain == "stdout: red"
