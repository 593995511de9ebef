"""The ``console`` backend: a yes/no prompt on the controlling terminal (``/dev/tty``).

For local runs. The prompt goes to the terminal, not to stdout/stderr, so an agent that reads
the output of the wrapped command cannot see or answer it through its pipes. Without a terminal
(CI, a daemon) the request is denied at once: non-interactive means deny. Prompts are asked one
at a time.

An agent that shares this terminal (``capture.pty: never``, or ``auto`` with stdout piped) can
type into it with ``ioctl(TIOCSTI)`` and answer its own prompt. So the backend refuses (denies)
when told the agent shares the terminal, asks only on a real terminal, and flushes typed-ahead
input (``tcflush``) before asking, so that nothing written before the question counts. The
sandbox blocks TIOCSTI as well; both stay. The decision is recorded as
``console:<owner of the terminal>``, the human at it, not the user Airlock runs as.
"""

from __future__ import annotations

import os
import pwd
import select
import termios
import threading
import time

from airlock.audit.keys import SigningKey
from airlock.audit.visible import visible
from airlock.gate.interface import Answer, ApprovalBackend, ApprovalRequest, Record

__all__ = ["ConsoleBackend"]

_YES = {"y", "yes"}
_MAX_LINE = 1024
_PROMPT_LOCK = threading.Lock()  # one terminal, one question at a time


class ConsoleBackend(ApprovalBackend):
    """Ask on ``tty`` (default ``/dev/tty``); anything but ``y``/``yes`` is a denial."""

    name = "console"

    def __init__(
        self,
        *,
        key: SigningKey,
        record: Record | None = None,
        tty: str = "/dev/tty",
        default_timeout: float = 1800.0,
        agent_shares_terminal: bool = False,
    ) -> None:
        super().__init__(key=key, record=record)
        self._tty = tty
        self._default_timeout = default_timeout
        self._agent_shares_terminal = agent_shares_terminal
        self._answers: dict[str, Answer] = {}
        self._answers_lock = threading.Lock()

    def _submit(self, req: ApprovalRequest) -> None:
        if self._agent_shares_terminal:
            self._answer(req, False, "airlock", _SHARED)
            return
        try:
            fd = os.open(self._tty, os.O_RDWR | os.O_NOCTTY)
        except OSError:
            self._answer(req, False, "airlock", "no terminal to ask on (non-interactive: denied)")
            return
        if not os.isatty(fd):
            os.close(fd)
            self._answer(req, False, "airlock", f"{self._tty} is not a terminal: denied")
            return
        thread = threading.Thread(target=self._prompt, args=(req, fd), daemon=True)
        thread.start()

    def _fetch(self, req: ApprovalRequest) -> Answer | None:
        with self._answers_lock:
            return self._answers.get(req.request_id)

    def _answer(self, req: ApprovalRequest, approved: bool, by: str, reason: str) -> None:
        answer = Answer(approved, by, req.operation_hash, reason)
        with self._answers_lock:
            self._answers.setdefault(req.request_id, answer)

    def _prompt(self, req: ApprovalRequest, fd: int) -> None:
        deadline = req.expires_at or (req.requested_at + self._default_timeout)
        try:
            with _PROMPT_LOCK:
                termios.tcflush(fd, termios.TCIFLUSH)  # typed ahead = not an answer to this
                os.write(fd, _question(req).encode("utf-8", "replace"))
                line = _read_line(fd, deadline)
                who = _human(fd)
        except OSError:
            line = None
        finally:
            os.close(fd)
        if line is None:
            return  # no answer: the request expires
        approved = line.strip().lower() in _YES
        self._answer(req, approved, f"console:{who}", "" if approved else "denied at prompt")


def _question(req: ApprovalRequest) -> str:
    op = req.operation
    where = f" on gateway {op.gateway}" if op.gateway else ""
    return (
        f"\r\nairlock: approval needed ({op.kind}{where}, rule {op.rule_id})\r\n"
        f"  {_inert(op.text)}\r\n"
        f"  operation {req.operation_hash[:16]}  request {req.request_id}\r\n"
        "Approve? [y/N] "
    )


def _inert(text: str) -> str:
    """``text`` as the terminal must show it: the agent wrote it, and a control character
    (an escape sequence moving the cursor, erasing lines; a carriage return; a bidi override)
    could make the approver read another statement than the one held. Each is shown as an
    escape (``\\x1b``, ``\\u202e``); line breaks stay, indented."""
    return visible(text).replace("\n", "\r\n  ")


def _read_line(fd: int, deadline: float) -> str | None:
    buf = b""
    while b"\n" not in buf and b"\r" not in buf and len(buf) < _MAX_LINE:
        left = deadline - time.time()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if not ready:
            continue
        chunk = os.read(fd, 256)
        if not chunk:
            break  # terminal closed: whatever was typed counts, i.e. usually a denial
        buf += chunk
    return buf.decode("utf-8", "replace")


_SHARED = (
    "the agent shares this terminal and could type the answer itself (TIOCSTI): denied; "
    "run the agent on its own pty (capture.pty: always) or use another approvals backend"
)


def _human(fd: int) -> str:
    """Who sits at the terminal: the owner of the terminal device (login(1) gives it to them)."""
    uid = os.fstat(fd).st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"
