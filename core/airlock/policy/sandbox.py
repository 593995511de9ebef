"""The policy's ``sandbox:`` section: whether and how the agent runs inside bubblewrap.

Paths are checked for shape here (absolute or ``~/``, no ``..``, no NUL); whether a path would
expose Airlock's own state is decided when the session knows where that state is
(:func:`airlock.sandbox.compile_spec`).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from airlock.policy.default import SANDBOX_MODES

__all__ = ["SANDBOX_MODES", "SandboxFilesystem", "SandboxPolicy"]

_ENV_PASS_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*\*?$"  # noqa: S105 (a name pattern)
_ENV_PASS_RE = re.compile(_ENV_PASS_PATTERN)


def _check_path(value: str) -> str:
    if "\0" in value or "\n" in value:
        raise PydanticCustomError("airlock_sandbox_path", "a path cannot hold NUL or newline")
    if not (value.startswith("/") or value == "~" or value.startswith("~/")):
        raise PydanticCustomError(
            "airlock_sandbox_path",
            "'{path}' must be absolute (/...) or in the home directory (~/...)",
            {"path": value[:200]},
        )
    if ".." in value.split("/"):
        raise PydanticCustomError(
            "airlock_sandbox_path", "'{path}' must not contain '..'", {"path": value[:200]}
        )
    return value


def _check_home_file(value: str) -> str:
    value = _check_path(value if value.startswith(("/", "~")) else f"~/{value}")
    if not value.startswith("~/"):
        raise PydanticCustomError(
            "airlock_sandbox_home",
            "'{path}' must be in the home directory (~/...)",
            {"path": value},
        )
    return value


def _check_env_pass(value: str) -> str:
    if not _ENV_PASS_RE.match(value):
        raise PydanticCustomError(
            "airlock_env_name",
            "not a variable name or NAME_* prefix glob (never NAME=value)",
        )
    return value


SandboxPath = Annotated[
    str,
    AfterValidator(_check_path),
    WithJsonSchema({"type": "string", "pattern": r"^(/|~$|~/)"}),
]
HomeFile = Annotated[str, AfterValidator(_check_home_file)]
EnvPass = Annotated[
    str,
    AfterValidator(_check_env_pass),
    WithJsonSchema({"type": "string", "pattern": _ENV_PASS_PATTERN}),
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class SandboxFilesystem(_Section):
    """What the agent sees besides the workspace (read-write) and the system (read-only)."""

    read_write: tuple[SandboxPath, ...] = Field(
        default=(),
        description=(
            "Extra paths the agent may write. Refused when one holds or lies inside Airlock's "
            "state (sessions, key, job state)."
        ),
    )
    read_only: tuple[SandboxPath, ...] = Field(
        default=(), description="Extra paths the agent may read (e.g. a tool cache)."
    )
    hidden: tuple[SandboxPath, ...] = Field(
        default=(),
        description="Paths covered by an empty file or directory, on top of Airlock's own list.",
    )


class SandboxPolicy(_Section):
    """How the agent is contained (docs/sandbox.md)."""

    mode: Literal["required", "best_effort", "off"] = Field(
        default="off",
        description=(
            "required: the agent runs in the sandbox or not at all (exit 85); best_effort: run "
            "uncontained when the sandbox cannot start, and record that; off: no sandbox. "
            "`airlock run --sandbox` / AIRLOCK_SANDBOX override it; the actions default to "
            "required."
        ),
    )
    filesystem: SandboxFilesystem = Field(default_factory=SandboxFilesystem)
    env: tuple[EnvPass, ...] = Field(
        default=(),
        description=(
            "Variables passed into the sandbox (names or NAME_* globs) besides PATH, TERM, LANG, "
            "LC_*, TZ and the gateway variables. Held secrets never pass."
        ),
    )
    home_files: tuple[HomeFile, ...] = Field(
        default=(),
        description="Files from the real home copied in read-only (e.g. ~/.gitconfig).",
    )
