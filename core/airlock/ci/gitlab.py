"""GitLab CI files: dotenv reports, a sourceable environment file, and collapsible log sections.

GitLab has no runtime masking (only variables defined in the project settings are masked), so
the two files here have different duties:

- :func:`write_dotenv` writes an ``artifacts:reports:dotenv`` file: *non-secret* values
  (session id, archive URL, verdict) passed to later jobs. The file is a downloadable artifact,
  so a secret must never go there. GitLab's own rules are enforced: ``NAME=VALUE`` lines, names
  of ASCII letters, digits and ``_``, one line per value, at most 5 KiB and 20 variables by
  default (instance limits).
- :func:`write_env_script` writes ``export NAME='value'`` lines, mode 0600, for ``source`` in
  the *same* job's later script lines: that is how credentials reach the agent on GitLab. Keep
  it outside ``artifacts:paths``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path

from airlock.audit.visible import visible
from airlock.ci.artifacts import replace_file
from airlock.errors import InfrastructureUnavailable, UsageError

__all__ = [
    "DOTENV_MAX_BYTES",
    "DOTENV_MAX_VARIABLES",
    "format_dotenv",
    "format_env_script",
    "section_end",
    "section_start",
    "shell_quote",
    "write_dotenv",
    "write_env_script",
]

DOTENV_MAX_BYTES = 5 * 1024
DOTENV_MAX_VARIABLES = 20
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECTION = re.compile(r"[A-Za-z0-9_.\-]+")


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"invalid variable name {name!r}",
            hint="use ASCII letters, digits and '_' only, starting with a letter or '_'",
        )


def format_dotenv(values: Mapping[str, str], *, max_variables: int = DOTENV_MAX_VARIABLES) -> str:
    """The dotenv report text for ``values``; refuses what GitLab would reject or misread."""
    if len(values) > max_variables:
        raise UsageError(
            f"{len(values)} variables for the dotenv report; GitLab accepts {max_variables}",
            hint="pass fewer values to later jobs (the rest are in the session log)",
        )
    lines = []
    for name, value in values.items():
        _check_name(name)
        if any(ch in value for ch in "\r\n\0"):
            raise UsageError(f"the value of {name} spans several lines; dotenv allows one")
        lines.append(f"{name}={value}\n")
    text = "".join(lines)
    if len(text.encode("utf-8")) > DOTENV_MAX_BYTES:
        raise UsageError(
            f"the dotenv report would be over {DOTENV_MAX_BYTES} bytes; GitLab drops such a file"
        )
    return text


def shell_quote(value: str) -> str:
    """``value`` as one POSIX shell word: single quotes, with embedded quotes spliced."""
    return "'" + value.replace("'", "'\"'\"'") + "'"


def format_env_script(values: Mapping[str, str]) -> str:
    """``export NAME='value'`` lines for ``source`` in a POSIX shell."""
    out = []
    for name, value in values.items():
        _check_name(name)
        if "\0" in value:
            raise UsageError(f"the value of {name} holds a NUL byte; a shell cannot carry it")
        out.append(f"export {name}={shell_quote(value)}\n")
    return "".join(out)


def _write_private(path: Path, text: str) -> None:
    """A new 0600 file at ``path``: what held the name before (a symlink or hard link planted
    in the checkout) is removed, never written through (see airlock.ci.artifacts)."""
    try:
        replace_file(path, text.encode("utf-8"), 0o600)
    except OSError as exc:
        raise InfrastructureUnavailable(
            f"cannot write {path}: {exc.strerror}", hint="check that the directory is writable"
        ) from exc


def write_dotenv(path: Path, values: Mapping[str, str]) -> None:
    """Write the dotenv report (non-secret values only: it is a downloadable artifact)."""
    _write_private(path, format_dotenv(values))


def write_env_script(path: Path, values: Mapping[str, str]) -> None:
    """Write a 0600 file of ``export`` lines for ``source`` later in the same job."""
    _write_private(path, format_env_script(values))


def section_start(
    name: str, header: str, *, collapsed: bool = True, now: float | None = None
) -> str:
    """The line that opens a collapsible job-log section (print it to stdout)."""
    if not _SECTION.fullmatch(name):
        raise UsageError(f"invalid section name {name!r}")
    stamp = int(time.time() if now is None else now)
    option = "[collapsed=true]" if collapsed else ""
    title = visible(" ".join(header.split()))  # no escape or bidi control of the header's own
    return f"\x1b[0Ksection_start:{stamp}:{name}{option}\r\x1b[0K{title}"


def section_end(name: str, *, now: float | None = None) -> str:
    """The line that closes the section opened by :func:`section_start`."""
    if not _SECTION.fullmatch(name):
        raise UsageError(f"invalid section name {name!r}")
    stamp = int(time.time() if now is None else now)
    return f"\x1b[0Ksection_end:{stamp}:{name}\r\x1b[0K"
