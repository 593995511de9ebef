"""One exception root for everything Airlock raises on purpose.

Each error explains itself (``str(err)``), says what to check next (``hint``) and maps to one
exit code of the documented table (docs/exit-codes.md). The CLI catches ``AirlockError`` once,
in ``airlock._cli.main``. Messages never carry secret values: callers pass names, paths and rule
ids, not the data that matched.

    AirlockError
     ├── UsageError                  bad flags, missing command                  → 80
     │    ├── ConfigError            unreadable or invalid policy / config file  → 80
     │    └── MissingExtra           an optional dependency is not installed     → 80
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
    "MissingExtra",
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


# The top-level import name of each optional dependency → the extra of the distribution
# (`airlock-ci`) that installs it. Everything else the job side imports is a base dependency.
EXTRA_OF_MODULE = {
    "hyperscan": "fast",
    "boto3": "archive",
    "botocore": "archive",
    "duckdb": "archive",
    "starlette": "broker",
    "sqlalchemy": "broker",
    "psycopg": "broker",
    "prometheus_client": "broker",
    "github": "broker",
    "gitlab": "broker",
    "requests": "broker",
    "uvicorn": "broker",
    "uvloop": "broker",
    "mcp": "agent",
    "anthropic": "agent",
    "openai": "agent",
}


class MissingExtra(UsageError):
    """A command needs an optional dependency that is not installed: name the extra to add."""

    def __init__(self, module: str, extra: str, *, what: str = "this command") -> None:
        spec = f"airlock-ci[{extra}]"
        super().__init__(
            f"{what} needs the Python package {module!r}, which is not installed",
            hint=f"install {spec} (pip install '{spec}') in the environment that runs airlock",
        )
        self.module = module
        self.extra = extra

    @classmethod
    def from_import(
        cls, exc: ModuleNotFoundError, *, command: str | None = None
    ) -> MissingExtra | None:
        """The MissingExtra for ``exc``; None when the missing module is not an optional one."""
        module = (exc.name or "").split(".")[0]
        extra = EXTRA_OF_MODULE.get(module)
        if extra is None:
            return None
        what = f"`airlock {command}`" if command else "this command"
        return cls(module, "broker" if command == "broker" else extra, what=what)


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
