"""Which session directories a recorder on this machine opened, since it last booted.

A session whose recorder died is sealed later, as incomplete, with the signing key: whatever
chain its ``events.jsonl`` holds is then signed. A directory that merely looks like a session
(committed to the repository under ``.airlock/sessions``, or in a GitLab checkout's
``airlock/sessions``, which the archive job seals and archives) must never be sealed: its
events, identity included, are anyone's to write. So the writer leaves the kernel's boot id in
each directory it opens (``opened-on``), and sealing late (``seal_abandoned_sessions``) takes only
directories opened on this machine in this boot: a random value no one outside the machine
knows in advance. ``airlock seal PATH`` (explicit) is not limited.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["OPENED_FILE", "mark_opened", "opened_here"]

OPENED_FILE = "opened-on"
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _this_boot() -> str | None:
    try:
        return _BOOT_ID.read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None  # not Linux: no boot id, no mark (sealing late stays as it was)


def mark_opened(session_dir: Path) -> None:
    """Leave this boot's id in a session directory the writer has just made."""
    boot = _this_boot()
    if boot is None:
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(session_dir / OPENED_FILE, flags, 0o600)
    try:
        os.write(fd, boot.encode("ascii"))
    finally:
        os.close(fd)


def opened_here(session_dir: Path) -> bool:
    """True when a recorder of this machine, in this boot, opened ``session_dir``."""
    boot = _this_boot()
    if boot is None:
        return True
    marker = session_dir / OPENED_FILE
    try:
        if marker.is_symlink():
            return False
        return marker.read_bytes()[:64].decode("ascii", "replace").strip() == boot
    except OSError:
        return False
