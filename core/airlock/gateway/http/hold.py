"""A request held for approval, I/O-free (h11 style): facts in, actions out.

The asyncio proxy reads the body, talks to the approval backend and the upstream; this module
decides. One :class:`Hold` per held request::

    hold = Hold(method, path, query, rule_id, limit=…)
    hold.body(chunk)…            → [] or [Refuse(413)]          the body is counted and hashed
    hold.end(shown_query, excerpt) → [Ask(text)] or [Pass]       git's push probe passes unasked
    hold.decided(outcome, why)   → [Forward] or [Refuse(403)]    "approved" | "denied" | "expired"
    hold.client_gone()           → [Cancel, Gone]                the client left: never forwarded
    hold.session_ended()         → [Cancel, Refuse(503)]
    hold.forward()               → the binding, once; a second call raises

Invariants (property-tested in tests/gateway/http/test_http_hold.py): :class:`Forward` appears
at most once, only after an approval of that very hold, never after the client left or the
session ended; the text asked about binds the method, the normalised target and the SHA-256 of
the whole body, so an approval cannot be spent on another request.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Literal

from airlock.gateway.http.paths import NormalPath, normalize_path

__all__ = [
    "APPROVED",
    "CLIENT_GONE",
    "DENIED",
    "EXPIRED",
    "SESSION_ENDED",
    "Action",
    "Ask",
    "Cancel",
    "Forward",
    "Gone",
    "Hold",
    "HoldError",
    "Outcome",
    "Pass",
    "Refuse",
]

Outcome = Literal["approved", "denied", "expired"]
APPROVED: Outcome = "approved"
DENIED: Outcome = "denied"
EXPIRED: Outcome = "expired"
CLIENT_GONE = "client disconnected"
SESSION_ENDED = "session ended"
_FLUSH_PKT = b"0000"


@dataclass(frozen=True)
class Ask:
    """Ask a human about ``text`` (masked, shown; it binds the exact request)."""

    text: str


@dataclass(frozen=True)
class Pass:
    """Forward without asking, and record why (git's push probe)."""

    why: str


@dataclass(frozen=True)
class Forward:
    """Send the held request upstream, once. ``binding`` is the SHA-256 that was asked about."""

    binding: str


@dataclass(frozen=True)
class Refuse:
    """Answer the client ``status`` with ``error`` and ``hint``; nothing goes upstream."""

    status: int
    error: str
    hint: str


@dataclass(frozen=True)
class Cancel:
    """Cancel the pending approval request (``approval.cancelled``, with ``reason``)."""

    reason: str


@dataclass(frozen=True)
class Gone:
    """The client left: record the request as abandoned (499); nothing goes upstream."""

    why: str


Action = Ask | Pass | Forward | Refuse | Cancel | Gone


class HoldError(Exception):
    """An event that cannot happen in this state (a bug in the driver)."""


class _State(enum.Enum):
    READING = "reading"
    ASKING = "asking"
    APPROVED = "approved"
    FORWARDED = "forwarded"
    DONE = "done"  # refused, cancelled or abandoned: never forwarded


_GIT_PROBE = "not asked: git's push probe (a flush packet alone) changes nothing"


class Hold:
    """One request held for approval (see the module doc)."""

    def __init__(
        self, method: str, path: NormalPath, query: str, rule_id: str, *, limit: int
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.rule_id = rule_id
        self.limit = limit
        self.size = 0
        self._digest = hashlib.sha256()
        self._prefix = b""
        self._state = _State.READING
        self.binding = ""

    @property
    def sha256(self) -> str:
        """SHA-256 of the body counted so far (the whole body once :meth:`end` was called)."""
        return self._digest.hexdigest()

    @property
    def forwarded(self) -> bool:
        return self._state is _State.FORWARDED

    def body(self, chunk: bytes) -> list[Action]:
        """Count and hash one chunk of the body; refuse once it passes ``limit``."""
        self._expect(_State.READING)
        self.size += len(chunk)
        self._digest.update(chunk)
        if len(self._prefix) < len(_FLUSH_PKT) + 1:
            self._prefix = (self._prefix + chunk)[: len(_FLUSH_PKT) + 1]
        if self.size <= self.limit:
            return []
        self._state = _State.DONE
        return [
            Refuse(
                413,
                f"request body larger than {self.limit} bytes cannot be held for approval",
                "send a smaller body, or ask for the hold limit to be raised",
            )
        ]

    def end(self, shown_query: str, excerpt: str | None) -> list[Action]:
        """The body is complete: ask about it (``shown_query`` is the masked query, ``excerpt``
        the masked start of the body), or let git's push probe pass."""
        self._expect(_State.READING)
        self.binding = self._binding()
        if self._is_git_push_probe():
            self._state = _State.APPROVED
            return [Pass(_GIT_PROBE), Forward(self.binding)]
        self._state = _State.ASKING
        return [Ask(self._text(shown_query, excerpt))]

    def decided(self, outcome: Outcome) -> list[Action]:
        """The approval backend answered."""
        if self._state is _State.DONE:  # the client left or the session ended first
            return []
        self._expect(_State.ASKING)
        if outcome == APPROVED:
            self._state = _State.APPROVED
            return [Forward(self.binding)]
        self._state = _State.DONE
        return [_refusal(outcome, self.rule_id)]

    def client_gone(self) -> list[Action]:
        """The client disconnected. While asking, the request is cancelled."""
        return self._abandon([Gone(f"{CLIENT_GONE} while held for approval")], CLIENT_GONE)

    def session_ended(self) -> list[Action]:
        """The session is ending while the request waits."""
        refusal = Refuse(
            503,
            f"the session ended while the request was held for guardrail {self.rule_id}",
            "nothing was sent upstream; run the request in a new session",
        )
        return self._abandon([refusal], SESSION_ENDED)

    def forward(self, method: str, path: NormalPath, query: str, sha256: str) -> str:
        """Consume the approval for the request about to be sent: it must be the one asked
        about, and it is sent once. Returns the binding."""
        self._expect(_State.APPROVED)
        if _binding(method, path, query, sha256) != self.binding:
            raise HoldError("the request to forward is not the one that was approved")
        self._state = _State.FORWARDED
        return self.binding

    def _abandon(self, actions: list[Action], reason: str) -> list[Action]:
        if self._state in (_State.READING, _State.ASKING):
            asked = self._state is _State.ASKING
            self._state = _State.DONE
            return ([Cancel(reason)] if asked else []) + actions
        return []

    def _binding(self) -> str:
        return _binding(self.method, self.path, self.query, self.sha256)

    def _text(self, shown_query: str, excerpt: str | None) -> str:
        line = f"{self.method} {self.path.judged}"
        if self.query:
            line += "?" + shown_query
        if shown_query != self.query or normalize_path(self.path.judged) != self.path:
            # what is shown does not pin the request (a masked query, bytes shown as U+FFFD)
            line += f"\nrequest sha256 {self.binding}"
        if not self.size:
            return line
        shown = excerpt if excerpt is not None else "(not shown)"
        return f"{line}\nbody: {self.size} bytes, sha256 {self.sha256}\n{shown}"

    def _is_git_push_probe(self) -> bool:
        """git's probe before a push larger than http.postBuffer: one flush packet to
        receive-pack, an empty command list on which receive-pack changes nothing. The pack
        that follows is held and asked about as usual."""
        return (
            self.method == "POST"
            and self.path.judged.endswith("/git-receive-pack")
            and self._prefix == _FLUSH_PKT
        )

    def _expect(self, state: _State) -> None:
        if self._state is not state:
            raise HoldError(f"hold is {self._state.value}, not {state.value}")


def _binding(method: str, path: NormalPath, query: str, sha256: str) -> str:
    """SHA-256 over the exact request that would be forwarded."""
    target = path.wire + ("?" + query if query else "")
    return hashlib.sha256(f"{method}\n{target}\n{sha256}".encode()).hexdigest()


def _refusal(outcome: Outcome, rule_id: str) -> Refuse:
    if outcome == EXPIRED:
        return Refuse(
            403,
            f"approval timed out for guardrail {rule_id}",
            "nobody answered within the approval timeout (approvals.timeout in airlock.yaml); "
            "send the request again to ask again",
        )
    return Refuse(
        403,
        f"approval denied for guardrail {rule_id}",
        "the request was held for approval and not approved",
    )
