"""One exception root for everything Airlock raises on purpose.

Each error explains itself (``str(err)``), says what to check next (``hint``) and maps to one
exit code of the documented table (docs/exit-codes.md). The CLI catches ``AirlockError`` once,
in ``airlock._cli.main``. Messages never carry secret values: callers pass names, paths and rule
ids, not the data that matched.

    AirlockError
     ├── UsageError                  bad flags, missing command                  → 80
     │    └── ConfigError            unreadable or invalid policy / config file  → 80
     ├── PolicyDenied                a rule refused the operation               → 81
     ├── ApprovalDenied              a human said no                            → 82
     ├── ApprovalTimedOut            nobody answered in time (= denied)         → 83
     ├── VerificationFailed          a session log or seal does not check out   → 84
     └── InfrastructureUnavailable   fail closed: broker, recorder, tracer, S3  → 85
          └── RecordingError         the session cannot be written              → 85
"""

from __future__ import annotations

import enum

__all__ = [
    "AirlockError",
    "ApprovalDenied",
    "ApprovalTimedOut",
    "ConfigError",
    "ExitCode",
    "InfrastructureUnavailable",
    "PolicyDenied",
    "RecordingError",
    "UsageError",
    "VerificationFailed",
]


class ExitCode(enum.IntEnum):
    """Airlock's own exit statuses.

    They sit in 80-87 so that they do not collide with what wrapped commands commonly return
    (0-2, 126, 127, 128+signal). ``airlock run`` returns the command's own status unless Airlock
    itself must fail; then it returns one of these and says so on stderr and in the session log.
    """

    OK = 0
    USAGE = 80
    DENIED = 81
    APPROVAL_DENIED = 82
    APPROVAL_TIMEOUT = 83
    VERIFY_FAILED = 84
    UNAVAILABLE = 85
    INTERNAL = 87

    @property
    def meaning(self) -> str:
        return _MEANINGS[self]


_MEANINGS = {
    ExitCode.OK: "success (for `run`: the command's own status is passed through)",
    ExitCode.USAGE: "usage or configuration error; nothing was started",
    ExitCode.DENIED: "denied by policy",
    ExitCode.APPROVAL_DENIED: "approval denied",
    ExitCode.APPROVAL_TIMEOUT: "approval timed out (treated as denied)",
    ExitCode.VERIFY_FAILED: "verification failed: the log, seal or signature does not check out",
    ExitCode.UNAVAILABLE: "infrastructure unavailable; Airlock failed closed",
    ExitCode.INTERNAL: "internal error in Airlock (a bug: please report it)",
}


class AirlockError(Exception):
    """Root of Airlock's errors. ``hint`` says what to check next."""

    exit_code: ExitCode = ExitCode.INTERNAL
    default_hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def explain(self) -> str:
        """The message and, when there is one, the hint, for a human."""
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class UsageError(AirlockError):
    exit_code = ExitCode.USAGE
    default_hint = "see `airlock --help`"


class ConfigError(UsageError):
    default_hint = "fix the file; `airlock policy check FILE` explains each problem"


class PolicyDenied(AirlockError):
    exit_code = ExitCode.DENIED

    def __init__(self, message: str, *, rule_id: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.rule_id = rule_id


class ApprovalDenied(AirlockError):
    exit_code = ExitCode.APPROVAL_DENIED


class ApprovalTimedOut(AirlockError):
    exit_code = ExitCode.APPROVAL_TIMEOUT


class VerificationFailed(AirlockError):
    """A session does not verify. ``line`` is the 1-based line of the first broken point."""

    exit_code = ExitCode.VERIFY_FAILED

    def __init__(
        self, message: str, *, kind: str, line: int | None = None, hint: str | None = None
    ):
        super().__init__(message, hint=hint)
        self.kind = kind
        self.line = line


class InfrastructureUnavailable(AirlockError):
    exit_code = ExitCode.UNAVAILABLE


class RecordingError(InfrastructureUnavailable):
    default_hint = "check that the sessions directory is writable and has free space (--sessions)"
