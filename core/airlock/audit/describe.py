"""One describer for every view of a session: ``show``, the HTML report, the job summary, the
OCSF export and ``search`` all say the same thing about an event.

    describer = Describer()                 # one per session; feed it the events in log order
    for event in iter_events(session_dir):
        view = describer.view(event)        # EventView: summary, rule_id, outcome, denied

Each event type has exactly one entry in ``DESCRIBERS``: a function from the event's ``data`` (and
the session so far, for facts an event refers to, such as the rule of an approval request) to
:class:`Facts`. Unknown types are shown as their compact JSON, never dropped.

To add an event type (``net.connect``, ``llm.request``, …): write one function decorated with
``@describes("net.connect")`` below, returning ``Facts(summary, rule_id=…, outcome=…)``, and add
a case to ``tests/audit/test_describe.py`` (a test fails for any type in ``EventType`` without
an entry). Put a refusal's outcome in ``DENIED_OUTCOMES`` if it is a new word: OCSF and the
summary mark those as denials. ``search`` reads ``rule_id``/``outcome`` with the same rules in
SQL (``airlock.archive.search``); keep the two in step (a test compares them).

Everything here works on already-masked data and returns plain text; callers escape it for the
terminal, HTML or Markdown.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DENIED_OUTCOMES",
    "DESCRIBERS",
    "Describer",
    "EventView",
    "Facts",
    "describes",
    "output_text",
    "strip_ansi",
    "truncate",
]

# Outcomes that mean "this did not happen": OCSF status Failure, a denial in every view.
DENIED_OUTCOMES = frozenset({"deny", "denied", "expired", "blocked", "refused", "cancelled"})

# CSI sequences, OSC sequences (ended by BEL or ST), and other single-character escapes
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def strip_ansi(text: str) -> str:
    """Terminal text without escape sequences or control characters; CR/LF normalised."""
    text = _ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def output_text(data: Mapping[str, Any]) -> str:
    """The text of an output event (``text``, or ``b64`` decoded with replacement)."""
    if isinstance(data.get("text"), str):
        return str(data["text"])
    if isinstance(data.get("b64"), str):
        try:
            return base64.b64decode(data["b64"]).decode("utf-8", "replace")
        except ValueError:
            return ""
    return ""


@dataclass(frozen=True)
class Facts:
    """What one describer function says about an event."""

    summary: str
    rule_id: str | None = None
    outcome: str | None = None


@dataclass(frozen=True)
class EventView:
    """One event as every view shows it."""

    seq: Any
    type: str
    summary: str
    rule_id: str | None
    outcome: str | None

    @property
    def plain(self) -> str:
        """The summary without terminal escape sequences (for pages and exports; ``show``
        prints them escaped instead, so a reader sees what was there)."""
        return strip_ansi(self.summary)

    @property
    def denied(self) -> bool:
        """The event records a refusal: a denied rule, approval or expired request."""
        return self.outcome in DENIED_OUTCOMES


@dataclass
class _Session:
    """What later events refer back to: approval requests by id."""

    requests: dict[str, Mapping[str, Any]] = field(default_factory=dict)

    def operation(self, data: Mapping[str, Any]) -> Mapping[str, Any]:
        op = self.requests.get(str(data.get("request_id")))
        return op if op is not None else {}


Describe = Callable[[Mapping[str, Any], _Session], Facts]
DESCRIBERS: dict[str, Describe] = {}


def describes(*types: str) -> Callable[[Describe], Describe]:
    """Register the decorated function as the describer of ``types``."""

    def register(func: Describe) -> Describe:
        for type_ in types:
            DESCRIBERS[type_] = func
        return func

    return register


class Describer:
    """Describes the events of one session, read in order."""

    def __init__(self) -> None:
        self._session = _Session()

    def view(self, event: Mapping[str, Any]) -> EventView:
        """The view of ``event``; malformed data falls back to its JSON, never raises."""
        type_ = str(event.get("type"))
        raw = event.get("data")
        data: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
        func = DESCRIBERS.get(type_)
        facts = Facts(_compact(data))
        if func is not None:
            with contextlib.suppress(TypeError, ValueError, AttributeError, KeyError):
                facts = func(data, self._session)
        summary = " ".join(facts.summary.split()) or _compact(data)
        rule_id = facts.rule_id or _first(data, "rule_id", "rule")
        outcome = facts.outcome or _first(data, "approval", "action", "decision", "outcome")
        return EventView(event.get("seq"), type_, summary, rule_id, outcome)

    def describe(self, event: Mapping[str, Any], limit: int = 200) -> str:
        """A one-line, escape-free description of ``event`` (at most ``limit`` characters)."""
        return truncate(self.view(event).plain, limit)


def _first(data: Mapping[str, Any], *names: str) -> str | None:
    """The first of ``names`` with a non-empty value: the generic rule id / outcome fields."""
    for name in names:
        if data.get(name) not in (None, ""):
            return str(data[name])
    return None


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _argv(data: Mapping[str, Any]) -> str:
    argv = data.get("argv")
    if isinstance(argv, list):
        return shlex.join(str(a) for a in argv)
    return str(data.get("path", ""))


def _fields(data: Mapping[str, Any], *names: str) -> str:
    return " ".join(f"{n}={_compact(data[n])}" for n in names if data.get(n) is not None)


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


@describes("session.start")
def _start(data: Mapping[str, Any], _s: _Session) -> Facts:
    raw = data.get("identity")
    ident: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    where = " ".join(str(ident[k]) for k in ("platform", "repository", "run_id") if ident.get(k))
    who = f" by {ident['actor']}" if ident.get("actor") else ""
    command = f": {_argv(data)}" if "argv" in data else ""
    return Facts(f"{where}{who}{command}".strip(": ") or "session started")


@describes("session.end")
def _end(data: Mapping[str, Any], _s: _Session) -> Facts:
    if data.get("signal") is not None:
        text = f"killed by {data['signal']}"
    else:
        text = f"exit {data.get('exit_status', data.get('exit_code'))}"
    extra = _fields(data, "duration_seconds", "reason")
    return Facts(f"{text} {extra}".strip())


@describes("capture.status")
def _capture(data: Mapping[str, Any], _s: _Session) -> Facts:
    return Facts(_fields(data, "exec", "tracer", "active", "detail"))


@describes("process.exec")
def _exec(data: Mapping[str, Any], _s: _Session) -> Facts:
    return Facts(f"[{data.get('pid', '?')}] {_argv(data)}")


@describes("process.exit")
def _exit(data: Mapping[str, Any], _s: _Session) -> Facts:
    pid = data.get("pid", "?")
    if data.get("signal") is not None:
        return Facts(f"[{pid}] killed by {data['signal']}")
    return Facts(f"[{pid}] exited {data.get('status', data.get('exit_code', '?'))}")


@describes("output", "input")
def _output(data: Mapping[str, Any], _s: _Session) -> Facts:
    stream = str(data.get("stream", ""))
    if "text" not in data and isinstance(data.get("b64"), str):
        return Facts(f"{stream}: <{len(str(data['b64'])) * 3 // 4} bytes, not UTF-8>")
    return Facts(f"{stream}: {output_text(data).strip()}".strip(": "))


@describes("signal")
def _signal(data: Mapping[str, Any], _s: _Session) -> Facts:
    return Facts(f"forwarded {data.get('forwarded', data.get('signal', '?'))}")


@describes("mask.registered")
def _mask(data: Mapping[str, Any], _s: _Session) -> Facts:
    digest = str(data.get("sha256", ""))[:12]
    return Facts(f"secret registered ({digest})".strip(), rule_id=_text(data.get("rule_id")))


@describes("db.query")
def _query(data: Mapping[str, Any], _s: _Session) -> Facts:
    where = data.get("gateway") or data.get("connection") or ""
    return Facts(f"{where}: {data.get('sql') or data.get('query') or ''}".strip(": "))


@describes("db.result")
def _result(data: Mapping[str, Any], _s: _Session) -> Facts:
    error = data.get("error")
    if isinstance(error, dict):
        return Facts(f"error {error.get('sqlstate')}: {error.get('message')}", outcome="error")
    return Facts(f"{data.get('tag') or 'result'}: {data.get('rows')} rows")


@describes("http.request")
def _request(data: Mapping[str, Any], _s: _Session) -> Facts:
    target = data.get("url") or data.get("path") or ""
    query = f"?{data['query']}" if data.get("query") else ""
    return Facts(f"{data.get('method', '')} {target}{query}".strip())


@describes("http.response")
def _response(data: Mapping[str, Any], _s: _Session) -> Facts:
    text = f"HTTP {data.get('status')}"
    if data.get("error"):
        text += f": {data['error']}"
    return Facts(f"{text} {_fields(data, 'size', 'duration_ms')}".strip())


@describes("guardrail.decision")
def _guardrail(data: Mapping[str, Any], _s: _Session) -> Facts:
    rule = _text(data.get("rule_id") or data.get("rule"))
    action = _text(data.get("action") or data.get("decision") or data.get("outcome"))
    # after an approval request: the action it ended in, and what the human said
    outcome = _text(data.get("approval")) or action
    what = data.get("sql") or " ".join(str(data.get(k, "")) for k in ("method", "path")).strip()
    text = f"{rule or 'no rule'}: {action or '?'}"
    if data.get("approval"):
        text += f" (approval {data['approval']})"
    return Facts(f"{text} {what}".strip(), rule_id=rule, outcome=outcome)


def _operation_text(op: Mapping[str, Any]) -> str:
    kind = f"{op['kind']} " if op.get("kind") else ""
    return f"{kind}{op.get('text', '')}".strip()


@describes("approval.requested")
def _requested(data: Mapping[str, Any], session: _Session) -> Facts:
    raw = data.get("operation")
    op: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    session.requests[str(data.get("request_id"))] = op
    rule = _text(op.get("rule_id"))
    via = f" via {data['backend']}" if data.get("backend") else ""
    return Facts(
        f"{rule or 'no rule'}: approval requested{via}: {_operation_text(op)}",
        rule_id=rule,
        outcome="requested",
    )


@describes("approval.posted")
def _posted(data: Mapping[str, Any], session: _Session) -> Facts:
    rule = _text(session.operation(data).get("rule_id"))
    where = data.get("url") or data.get("broker_request") or ""
    return Facts(f"{rule or 'no rule'}: approval request posted {where}".strip(), rule_id=rule)


@describes("approval.decided", "approval.expired")
def _decided(data: Mapping[str, Any], session: _Session) -> Facts:
    op = session.operation(data)
    rule = _text(data.get("rule_id") or op.get("rule_id"))
    if data.get("reason") == "expired" and data.get("approved") is not True:
        outcome = "expired"
    else:
        outcome = "approved" if data.get("approved") is True else "denied"
    by = f" by {data['by']}" if data.get("by") else ""
    reason = f" ({data['reason']})" if data.get("reason") and outcome != "expired" else ""
    what = f": {_operation_text(op)}" if op else ""
    return Facts(f"{rule or 'no rule'}: {outcome}{by}{reason}{what}", rule_id=rule, outcome=outcome)


@describes("approval.cancelled")
def _cancelled(data: Mapping[str, Any], session: _Session) -> Facts:
    rule = _text(data.get("rule_id") or session.operation(data).get("rule_id"))
    reason = f": {data['reason']}" if data.get("reason") else ""
    return Facts(
        f"{rule or 'no rule'}: approval cancelled{reason}", rule_id=rule, outcome="cancelled"
    )


@describes("credential.issued")
def _credential(data: Mapping[str, Any], _s: _Session) -> Facts:
    digest = f"sha256 {str(data['sha256'])[:12]}…" if data.get("sha256") else ""
    parts = [data.get("grant"), data.get("name") or data.get("provider"), digest]
    return Facts(" ".join(str(p) for p in parts if p))


@describes("checkpoint")
def _checkpoint(data: Mapping[str, Any], _s: _Session) -> Facts:
    head = str(data.get("head", ""))[:12]
    by = f" by {data['key_id']}" if data.get("key_id") else ""
    return Facts(f"line {data.get('seq')} (head {head}…) witnessed{by}")


@describes("gateway.started")
def _gateway(data: Mapping[str, Any], _s: _Session) -> Facts:
    return Facts(f"{data.get('name')} ({data.get('kind')}) at {data.get('address')}")


@describes("airlock.error")
def _error(data: Mapping[str, Any], _s: _Session) -> Facts:
    where = data.get("component") or "airlock"
    return Facts(f"{where}: {data.get('error') or data.get('message') or ''}", outcome="error")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


@describes("llm.request")
def _llm_request(data: Mapping[str, Any], _s: _Session) -> Facts:
    if data.get("auth"):
        return Facts(f"model request refused: {data['auth']} ticket")
    new = len(data.get("messages") or [])
    return Facts(f"{data.get('model', data.get('path', ''))}: {new} new message(s)")


@describes("llm.response")
def _llm_response(data: Mapping[str, Any], _s: _Session) -> Facts:
    calls = ", ".join(str(c.get("name")) for c in data.get("tool_calls") or [])
    raw = data.get("usage")
    usage: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
    text = str(data.get("text") or data.get("error") or "")[:120]
    tools = f" → {calls}" if calls else ""
    tokens = f" ({_int(usage.get('input_tokens'))}/{_int(usage.get('output_tokens'))} tok)"
    return Facts(
        f"{data.get('outcome', '')}: {text}{tools}{tokens if usage else ''}",
        outcome=_text(data.get("outcome")),
    )


@describes("mcp.request")
def _mcp_request(data: Mapping[str, Any], _s: _Session) -> Facts:
    what = data.get("tool") or data.get("uri") or data.get("error") or ""
    action = f" [{data['action']}]" if data.get("action") else ""
    return Facts(f"{data.get('method', '')} {what}{action}".strip())


@describes("mcp.response")
def _mcp_response(data: Mapping[str, Any], _s: _Session) -> Facts:
    outcome = f"error {data['error']}" if data.get("error") else "ok"
    took = f" in {data['duration_ms']} ms" if "duration_ms" in data else ""
    return Facts(f"{data.get('tool') or data.get('method', '')}: {outcome}{took}".strip())


@describes("net.connect")
def _net(data: Mapping[str, Any], _s: _Session) -> Facts:
    """``denied CONNECT evil.example:443 (airlock.default-deny: ...)`` and the like."""
    target = f"{data.get('host', '?')}:{data.get('port', '?')}"
    what = f"{data.get('method', '')} http://{target}{data.get('path', '')}"
    if data.get("kind") != "http":
        what = f"CONNECT {target}"
    outcome = str(data.get("outcome", "?"))
    rule = str(data.get("rule_id") or "?")
    if outcome == "denied":
        reason = f": {data['error']}" if data.get("error") else ""
        return Facts(f"denied {what} ({rule}{reason})")
    moved = f"{data.get('bytes_up', 0)} B up, {data.get('bytes_down', 0)} B down"
    return Facts(f"{outcome} {what} ({rule}; {moved})")


@describes("sandbox.status")
def _sandbox(data: Mapping[str, Any], _s: _Session) -> Facts:
    probes = [p for p in data.get("probes") or [] if isinstance(p, dict)]
    failed = [str(p.get("id")) for p in probes if not p.get("ok")]
    state = "active" if data.get("active") else f"NOT active ({data.get('reason', '?')})"
    checks = f"{len(probes) - len(failed)}/{len(probes)} probes passed" if probes else "no probes"
    tail = f"; failed: {', '.join(failed)}" if failed else ""
    return Facts(f"sandbox {data.get('mode', '?')}: {state}; {checks}{tail}")
