"""Secret references in provider configs: ``file:/path``, ``env:NAME`` or a literal value."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from airlock.audit.files import read_limited
from airlock.errors import ConfigError

__all__ = ["redact", "resolve_secret"]

_MAX_SECRET_FILE = 1 << 20


def resolve_secret(spec: str, what: str) -> str:
    """The value ``spec`` refers to, read now (files and env vars may be rotated at any time).

    A file's single trailing newline is dropped, as editors add one.
    """
    if spec.startswith("file:"):
        return _read_file(Path(spec[5:]), what)
    if spec.startswith("env:"):
        name = spec[4:]
        value = os.environ.get(name)
        if not value:
            raise ConfigError(f"{what}: environment variable {name} is not set or empty")
        return value
    return spec


def _read_file(path: Path, what: str) -> str:
    data = read_limited(
        path,
        _MAX_SECRET_FILE,
        label="secret file",
        what=what,
        hint="check the path and that the broker's user can read it",
    )
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: secret file {path} is not UTF-8 text") from None
    return text[:-1] if text.endswith("\n") else text


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each (non-trivial) secret replaced by ``***``."""
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
