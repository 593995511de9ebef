"""Reading small secret files (signing keys, secret references): capped, errors that say what
to fix, never the content."""

from __future__ import annotations

from pathlib import Path

from airlock.errors import ConfigError

__all__ = ["read_limited"]


def read_limited(path: Path, limit: int, *, label: str, hint: str, what: str = "") -> bytes:
    """At most ``limit`` bytes of ``path``; :class:`ConfigError` when it cannot be read or is
    larger. ``label`` names the file ("key file"); ``what`` says what it is for."""
    prefix = f"{what}: " if what else ""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        message = f"{prefix}could not read {label} {path} ({exc.strerror})"
        raise ConfigError(message, hint=hint) from None
    if len(data) > limit:
        raise ConfigError(f"{prefix}{label} {path} is larger than {_size(limit)}", hint=hint)
    return data


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit >> 10} KiB"
