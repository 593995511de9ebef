"""`airlock export --format ocsf`: session events as OCSF-shaped JSON lines for a SIEM.

Each event becomes one OCSF 1.3 record with the class that fits best (below); the Airlock event
is kept whole under ``unmapped.airlock`` so nothing is lost, and ``metadata.uid`` is
``<session>:<seq>`` so a SIEM can point back to the exact log line.

    session.start / session.end      6002 Application Lifecycle   (3 Start / 4 Stop)
    process.exec / process.exit      1007 Process Activity        (1 Launch / 2 Terminate)
    http.request / http.response     4002 HTTP Activity           (by method / 99 Other)
    db.query / db.result             6005 Datastore Activity      (99 Other)
    guardrail.*, approval.*          6003 API Activity            (99 Other, with disposition)
    credential.issued                3002 Authentication          (99 Other)
    net.connect                      4001 Network Activity        (1 Open, with disposition)
    llm.*, mcp.*                     6003 API Activity            (99 Other)
    anything else (output, ...)         0 Base Event              (99 Other)

Guardrail, approval and egress records (and any other refusal) carry ``status`` (Success /
Failure for a refusal), ``disposition`` and ``disposition_id`` (OCSF: 1 Allowed, 2 Blocked, 99
Other; an approval still pending is 99 "requested"), and the rule under ``policy.uid``, all
from the shared describer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from airlock import __version__
from airlock.audit.describe import Describer, EventView, truncate

__all__ = ["OCSF_VERSION", "dumps", "to_ocsf"]

OCSF_VERSION = "1.3.0"

# type → (category_uid, class_uid, activity_id)
_CLASSES: dict[str, tuple[int, int, int]] = {
    "session.start": (6, 6002, 3),
    "session.end": (6, 6002, 4),
    "process.exec": (1, 1007, 1),
    "process.exit": (1, 1007, 2),
    "http.request": (4, 4002, 99),
    "http.response": (4, 4002, 99),
    "db.query": (6, 6005, 99),
    "db.result": (6, 6005, 99),
    "credential.issued": (3, 3002, 99),
    "net.connect": (4, 4001, 1),  # Network Activity: Open (allowed or refused: see disposition)
    # the agent-native gateways: a model API call or an MCP tool call is an API call
    "llm.request": (6, 6003, 99),
    "llm.response": (6, 6003, 99),
    "mcp.request": (6, 6003, 99),
    "mcp.response": (6, 6003, 99),
}
_HTTP_ACTIVITY = {
    "CONNECT": 1,
    "DELETE": 2,
    "GET": 3,
    "HEAD": 4,
    "OPTIONS": 5,
    "POST": 6,
    "PUT": 7,
    "TRACE": 8,
}
# OCSF disposition_id: 1 Allowed, 2 Blocked, 99 Other
_DISPOSITION_ID = {"allow": 1, "allowed": 1, "approved": 1}


def _classify(etype: str, data: dict[str, Any]) -> tuple[int, int, int]:
    if etype.startswith(("guardrail.", "approval.")):
        return 6, 6003, 99
    category, class_uid, activity = _CLASSES.get(etype, (0, 0, 99))
    if etype == "http.request":
        activity = _HTTP_ACTIVITY.get(str(data.get("method", "")).upper(), 99)
    return category, class_uid, activity


def _millis(ts: str) -> int:
    try:
        return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return 0


def _has_disposition(etype: str, view: EventView) -> bool:
    """Decisions carry one: guardrails, approvals, egress attempts, and any refusal."""
    return etype.startswith(("guardrail.", "approval.", "net.")) or view.denied


def _disposition(view: EventView) -> dict[str, Any]:
    outcome = view.outcome or ""
    disposition_id = 2 if view.denied else _DISPOSITION_ID.get(outcome, 99)
    record: dict[str, Any] = {
        "disposition": outcome or "Other",
        "disposition_id": disposition_id,
        "status": "Failure" if view.denied else "Success",
        "status_id": 2 if view.denied else 1,
    }
    if view.rule_id:
        record["policy"] = {"uid": view.rule_id, "name": view.rule_id}
    return record


def _specific(etype: str, data: dict[str, Any]) -> dict[str, Any]:
    if etype.startswith("process."):
        argv = data.get("argv") if isinstance(data.get("argv"), list) else None
        proc: dict[str, Any] = {"pid": data.get("pid")}
        if argv:
            proc["cmd_line"] = " ".join(str(a) for a in argv)
            proc["name"] = str(argv[0]).rsplit("/", 1)[-1]
        if data.get("path"):
            proc["file"] = {"path": data["path"], "name": str(data["path"]).rsplit("/", 1)[-1]}
        return {"process": proc}
    if etype == "http.request":
        return {
            "http_request": {
                "http_method": data.get("method"),
                "url": {"url_string": data.get("url")},
            }
        }
    if etype == "http.response" and data.get("status") is not None:
        return {"http_response": {"code": data.get("status")}}
    return {}


def _severity(view: EventView) -> int:
    if view.type.startswith(("guardrail.", "approval.")) and view.outcome:
        return 3 if view.denied else 2  # Medium for a refusal, Low for a gated step
    return 1  # Informational


def to_ocsf(events: Iterable[dict[str, Any]], session_id: str) -> Iterator[dict[str, Any]]:
    """OCSF records for ``events`` (as read from a session log), in log order."""
    actor: dict[str, Any] = {}
    describer = Describer()
    for event in events:
        etype = str(event.get("type"))
        view = describer.view(event)
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        assert isinstance(data, dict)
        if etype == "session.start":
            ident = data.get("identity") if isinstance(data.get("identity"), dict) else {}
            assert isinstance(ident, dict)
            actor = {"user": {"name": ident.get("actor")}} if ident.get("actor") else {}
        category, class_uid, activity = _classify(etype, data)
        record: dict[str, Any] = {
            "category_uid": category,
            "class_uid": class_uid,
            "activity_id": activity,
            "type_uid": class_uid * 100 + activity,
            "severity_id": _severity(view),
            "time": _millis(str(event.get("ts", ""))),
            "message": truncate(view.plain, 500),
            "metadata": {
                "version": OCSF_VERSION,
                "product": {"name": "Airlock", "vendor_name": "Airlock", "version": __version__},
                "uid": f"{session_id}:{event.get('seq')}",
                "correlation_uid": session_id,
                "original_time": event.get("ts"),
                "log_name": "airlock-session",
            },
            **_specific(etype, data),
            **(_disposition(view) if _has_disposition(etype, view) else {}),
            "unmapped": {"airlock": {"type": etype, "seq": event.get("seq"), "data": data}},
        }
        if actor:
            record["actor"] = actor
        yield record


def dumps(record: dict[str, Any]) -> str:
    """One JSON line."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
