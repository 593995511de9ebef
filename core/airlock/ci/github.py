"""GitHub Actions workflow commands and files: masks, outputs, environment, PATH, job summary.

Every value that reaches the runner goes through one of these writers, never through ``echo``:

- :func:`mask_commands` turns a secret into ``::add-mask::`` lines, one per line of the value
  (the runner masks line by line, so a multi-line secret registered whole would leak its
  lines), with ``%`` escaped so the runner registers the literal text.
- :func:`format_file_command` writes ``NAME<<DELIMITER`` blocks to ``GITHUB_OUTPUT`` /
  ``GITHUB_ENV`` with a random delimiter that does not occur in the value, so a value cannot
  end the block early and inject further variables.
- :func:`set_env` refuses names that would let a value take over later steps' processes
  (``LD_PRELOAD``, ``NODE_OPTIONS``, ``BASH_ENV``, …) unless the caller says it means it.
- :func:`append_summary` caps the step summary below GitHub's 1 MiB limit.

Appends are a single ``write`` on a file opened with ``O_APPEND``: two steps' processes writing
at once cannot interleave inside one block.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path

from airlock.audit.visible import visible
from airlock.errors import InfrastructureUnavailable, UsageError

__all__ = [
    "EXEC_HIJACK_VARIABLES",
    "MAX_SUMMARY_BYTES",
    "GitHubFiles",
    "append_path",
    "append_summary",
    "error_annotation",
    "escape_command_data",
    "format_file_command",
    "mask_commands",
    "set_env",
    "set_output",
]

MAX_SUMMARY_BYTES = 1024 * 1024 - 4096
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Variables whose value decides what code later processes load or run. Through GITHUB_ENV they
# would reach every later step of the job, including Airlock's own seal and archive.
EXEC_HIJACK_VARIABLES = frozenset(
    {
        "BASH_ENV",
        "ENV",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "LD_AUDIT",
        "NODE_OPTIONS",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PYTHONHOME",
        "PERL5OPT",
        "RUBYOPT",
        "JAVA_TOOL_OPTIONS",
        "GIT_SSH_COMMAND",
        "PATH",
    }
)


def escape_command_data(value: str) -> str:
    """``value`` escaped as the data part of a workflow command (``%``, CR and LF)."""
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def error_annotation(message: str, *, title: str = "Airlock") -> str:
    """An ``::error::`` workflow command: the run's page shows ``message`` as an annotation
    (invisible characters escaped, :func:`~airlock.audit.visible.visible`)."""
    message, title = visible(message), visible(title)
    title = title.replace("%", "%25").replace("\r", "").replace("\n", " ")
    title = title.replace(":", "%3A").replace(",", "%2C")
    return f"::error title={title}::{escape_command_data(message)}"


def mask_commands(value: str) -> list[str]:
    """``::add-mask::`` lines for ``value``: one per non-blank line, stripped of CR.

    The runner matches masks line by line, so each line of a multi-line secret (a PEM key) is
    registered on its own. Blank lines are skipped: masking whitespace hides nothing.
    """
    lines = {line.rstrip("\r") for line in value.split("\n")}
    return [f"::add-mask::{escape_command_data(line)}" for line in sorted(lines) if line.strip()]


def _delimiter(value: str) -> str:
    while True:
        candidate = f"ghadelimiter_{secrets.token_hex(16)}"
        if candidate not in value:
            return candidate


def format_file_command(name: str, value: str) -> str:
    """One ``NAME<<DELIMITER`` block for ``GITHUB_OUTPUT`` or ``GITHUB_ENV``.

    The delimiter is random and absent from ``value``, so the value cannot close the block.
    """
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"invalid output or variable name {name!r}",
            hint="use letters, digits, '_' and '-' only, starting with a letter or '_'",
        )
    delimiter = _delimiter(value)
    return f"{name}<<{delimiter}\n{value}\n{delimiter}\n"


def _append(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as exc:
        raise InfrastructureUnavailable(
            f"cannot open the runner file {path}: {exc.strerror}",
            hint="this runs inside a GitHub Actions step; check that the runner set the file",
        ) from exc
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise InfrastructureUnavailable(f"short write to the runner file {path}")
    finally:
        os.close(fd)


def set_output(path: Path, name: str, value: str) -> None:
    """Append step output ``name`` to the ``GITHUB_OUTPUT`` file at ``path``."""
    _append(path, format_file_command(name, value))


def set_env(path: Path, name: str, value: str, *, allow_exec_hijack: bool = False) -> None:
    """Append variable ``name`` to the ``GITHUB_ENV`` file at ``path`` for the later steps.

    Names in :data:`EXEC_HIJACK_VARIABLES` are refused unless ``allow_exec_hijack`` is true
    (only Airlock's own session hook sets one: ``BASH_ENV``).
    """
    if not _ENV_NAME.fullmatch(name):
        raise UsageError(
            f"invalid environment variable name {name!r}",
            hint="use letters, digits and '_' only, starting with a letter or '_'",
        )
    if name.upper() in EXEC_HIJACK_VARIABLES and not allow_exec_hijack:
        raise UsageError(
            f"refusing to export {name} to later steps: it decides what code they run",
            hint="choose another variable name for this value",
        )
    _append(path, format_file_command(name, value))


def append_path(path: Path, directory: str) -> None:
    """Prepend ``directory`` to PATH for the later steps (the ``GITHUB_PATH`` file)."""
    if "\n" in directory or "\r" in directory or not directory:
        raise UsageError("a PATH entry must be one non-empty line")
    _append(path, directory + "\n")


def append_summary(path: Path, markdown: str, max_bytes: int = MAX_SUMMARY_BYTES) -> bool:
    """Append ``markdown`` to the step summary; False (nothing written) when it would not fit.

    GitHub refuses a step's summary over 1 MiB and shows an error instead of it; the size
    counted is what the file already holds plus what is added. Invisible characters (bidi
    controls, zero-width) are written as visible escapes.
    """
    markdown = visible(markdown)
    current = path.stat().st_size if path.exists() else 0
    if current + len(markdown.encode("utf-8")) > max_bytes:
        return False
    _append(path, markdown if markdown.endswith("\n") else markdown + "\n")
    return True


class GitHubFiles:
    """The runner files of the current step, read from the environment once.

    A writer whose file the runner did not set is a no-op for outputs and summary (running the
    CLI outside Actions is fine) but an error for masks' companions: :meth:`export_secret`
    refuses to export a value it cannot mask first.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.output = _path(environ, "GITHUB_OUTPUT")
        self.env = _path(environ, "GITHUB_ENV")
        self.path = _path(environ, "GITHUB_PATH")
        self.summary = _path(environ, "GITHUB_STEP_SUMMARY")
        self.in_actions = environ.get("GITHUB_ACTIONS") == "true"

    def set_output(self, name: str, value: str) -> None:
        """Set a step output when the runner gave a GITHUB_OUTPUT file."""
        if self.output is not None:
            set_output(self.output, name, value)

    def set_outputs(self, values: Mapping[str, str]) -> None:
        """Set several step outputs."""
        for name, value in values.items():
            self.set_output(name, value)

    def export_secret(self, name: str, value: str) -> Iterator[str]:
        """Yield the mask lines for ``value`` (print them first), then export it to GITHUB_ENV.

        A generator so that the caller prints each ``::add-mask::`` line to stdout before the
        value is written anywhere the runner will read it.
        """
        if self.env is None:
            raise UsageError(
                "GITHUB_ENV is not set: cannot export credentials to later steps",
                hint="run inside a GitHub Actions job, or use --export dotenv",
            )
        yield from mask_commands(value)
        set_env(self.env, name, value)

    def summarize(self, markdown: str) -> bool:
        """Append to the step summary; False when there is no summary file or it would not fit."""
        return self.summary is not None and append_summary(self.summary, markdown)


def _path(environ: Mapping[str, str], name: str) -> Path | None:
    value = environ.get(name)
    return Path(value) if value else None
