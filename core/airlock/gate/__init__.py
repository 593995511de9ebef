"""Approval gates: hold an operation until a human decides, bound to the operation's hash.

    backend = FileBackend(dir, key=session_key, record=writer.append)
    decision = await ask(backend, Operation(kind="sql", text=masked, rule_id="no-drop"), 1800)

The interface is in ``interface.py``; one module per backend (``console``, ``deny``, ``file``).
Unanswered requests expire to a denial; every decision is signed and recorded.
"""

from __future__ import annotations

from airlock.gate.console import ConsoleBackend
from airlock.gate.deny import DenyBackend
from airlock.gate.file import FileBackend, decide, pending
from airlock.gate.interface import (
    CANCELLED,
    EXPIRED,
    Answer,
    ApprovalBackend,
    ApprovalRequest,
    Approve,
    Approver,
    Decider,
    Decision,
    GateError,
    Operation,
    OperationKind,
    Record,
    approver,
    ask,
)

__all__ = [
    "CANCELLED",
    "EXPIRED",
    "Answer",
    "ApprovalBackend",
    "ApprovalRequest",
    "Approve",
    "Approver",
    "ConsoleBackend",
    "Decider",
    "Decision",
    "DenyBackend",
    "FileBackend",
    "GateError",
    "Operation",
    "OperationKind",
    "Record",
    "approver",
    "ask",
    "decide",
    "pending",
]
