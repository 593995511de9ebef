"""One-line, human descriptions of events, shared by the report, the summary and the export.

Everything here works on already-masked event data; descriptions are plain text (callers
escape for HTML or Markdown).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import Any

from airlock.archive.agent_summary import describe_agent_event

__all__ = ["describe", "net_text", "output_text", "strip_ansi", "truncate"]

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


def output_text(data: dict[str, Any]) -> str:
    """The text of an output event (``text``, or ``b64`` decoded with replacement)."""
    if isinstance(data.get("text"), str):
        return str(data["text"])
    if isinstance(data.get("b64"), str):
        try:
            return base64.b64decode(data["b64"]).decode("utf-8", "replace")
        except ValueError:
            return ""
    return ""


def _argv(data: dict[str, Any]) -> str:
    argv = data.get("argv")
    return " ".join(str(a) for a in argv) if isinstance(argv, list) else str(data.get("path", ""))


def _identity(data: dict[str, Any]) -> str:
    ident = data.get("identity") if isinstance(data.get("identity"), dict) else {}
    assert isinstance(ident, dict)
    parts = [ident.get("platform"), ident.get("repository"), ident.get("run_id")]
    who = f" by {ident['actor']}" if ident.get("actor") else ""
    return (
        " ".join(str(p) for p in parts if p) + who + (f": {_argv(data)}" if "argv" in data else "")
    )


def _exit(data: dict[str, Any]) -> str:
    if data.get("signal") is not None:
        return f"pid {data.get('pid')} killed by {data['signal']}"
    status = data.get("status", data.get("exit_code"))
    return f"pid {data.get('pid')} exited {status}"


def _decision(data: dict[str, Any]) -> str:
    rule = data.get("rule_id") or data.get("rule") or "?"
    outcome = data.get("outcome") or data.get("decision") or data.get("action") or "?"
    extra = data.get("approver") or data.get("reason") or ""
    return f"{rule}: {outcome}" + (f" ({extra})" if extra else "")


def _http(data: dict[str, Any]) -> str:
    if "status" in data and "method" not in data:
        return f"HTTP {data['status']}"
    return f"{data.get('method', '')} {data.get('url', data.get('path', ''))}".strip()


def _net(data: dict[str, Any]) -> str:
    """``denied CONNECT evil.example:443 (airlock.default-deny: ...)`` and the like."""
    target = f"{data.get('host', '?')}:{data.get('port', '?')}"
    what = f"{data.get('method', '')} http://{target}{data.get('path', '')}"
    if data.get("kind") != "http":
        what = f"CONNECT {target}"
    outcome = str(data.get("outcome", "?"))
    rule = str(data.get("rule_id") or "?")
    if outcome == "denied":
        reason = f": {data['error']}" if data.get("error") else ""
        return f"denied {what} ({rule}{reason})"
    moved = f"{data.get('bytes_up', 0)} B up, {data.get('bytes_down', 0)} B down"
    return f"{outcome} {what} ({rule}; {moved})"


def _sandbox(data: dict[str, Any]) -> str:
    probes = data.get("probes") or []
    failed = [str(p.get("id")) for p in probes if isinstance(p, dict) and not p.get("ok")]
    state = "active" if data.get("active") else f"NOT active ({data.get('reason', '?')})"
    checks = f"{len(probes) - len(failed)}/{len(probes)} probes passed" if probes else "no probes"
    return f"sandbox {data.get('mode', '?')}: {state}; {checks}" + (
        f"; failed: {', '.join(failed)}" if failed else ""
    )


_BY_TYPE: dict[str, Callable[[dict[str, Any]], str]] = {
    "session.start": _identity,
    "session.end": lambda d: f"exit {d.get('exit_status', d.get('exit_code'))}",
    "process.exec": _argv,
    "sandbox.status": _sandbox,
    "process.exit": _exit,
    "output": lambda d: strip_ansi(output_text(d)).strip(),
    "db.query": lambda d: str(d.get("sql") or d.get("query") or ""),
    "http.request": _http,
    "http.response": _http,
    "guardrail.decision": _decision,
    "approval.requested": _decision,
    "approval.decided": _decision,
    "approval.expired": _decision,
    "approval.cancelled": _decision,
    "net.connect": _net,
    "credential.issued": lambda d: " ".join(
        str(d[k]) for k in ("grant", "provider", "sha256") if d.get(k)
    ),
}


def net_text(data: dict[str, Any]) -> str:
    """The description of a ``net.connect`` event's data."""
    return _net(data)


def describe(event: dict[str, Any], limit: int = 200) -> str:
    """A one-line description of ``event`` (at most ``limit`` characters)."""
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    assert isinstance(data, dict)
    func = _BY_TYPE.get(str(event.get("type")))
    agent = None if func else describe_agent_event(str(event.get("type")), data)  # llm.*, mcp.*
    if agent is not None:
        text = agent
    else:
        text = func(data) if func else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return truncate(" ".join(text.split()), limit)
