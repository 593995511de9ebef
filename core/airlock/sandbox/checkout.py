"""The job's git credentials in the checkout, out of the agent's reach while it runs.

``actions/checkout`` (``persist-credentials``, its default) writes the job's ``GITHUB_TOKEN``
into the checkout's own ``.git/config`` as an ``http.<url>.extraheader``, and GitLab Runner puts
``CI_JOB_TOKEN`` in the remote's URL (``https://gitlab-ci-token:TOKEN@…``). The workspace is the
agent's to read, so the sandbox alone does not hide them. Before the agent starts, those lines
are taken out of ``.git/config`` (the rest stays: the agent may run and configure git); when the
sandbox has ended they are put back, so that the job's later steps (a push, a pull request) still
have them. What the agent changed in the file meanwhile is kept.

The config is rewritten by a new file renamed over it, and only while ``.git`` is a real
directory: a symlink the agent left in its place is never written through.

A recorder killed while the agent runs (SIGKILL, a runner that loses the machine's memory)
cannot put them back itself. So before a config is touched, what it held is written to a
journal in Airlock's state directory (0600, hidden from the agent, never in the workspace or
the sessions directory, which become artifacts), locked by the live run; the next ``airlock
run`` or ``airlock finalize`` of the job restores what a dead run left (:func:`restore_abandoned`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import re
import secrets as _random
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CheckoutJournal", "HiddenCredentials", "hide_checkout_credentials", "restore_abandoned"]

_SECTION = re.compile(r"^\s*\[")
_EXTRAHEADER = re.compile(r"^\s*extraheader\s*=", re.IGNORECASE)
_USERINFO_URL = re.compile(
    r"^(?P<head>\s*(?:url|pushurl)\s*=\s*\"?[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s\"]+)@",
    re.IGNORECASE,
)
_MIN_SECRET = 8
_JOURNAL = "checkout-credentials-"


@dataclass
class HiddenCredentials:
    """What was taken out of ``config``, to put back with :meth:`restore`."""

    config: Path
    root: Path  # the checkout's .git: nothing on the way to config may be a symlink
    original: bytes
    sanitized: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)  # (section line, removed line)
    urls: list[tuple[str, str]] = field(default_factory=list)  # (line as hidden, original line)
    secrets: list[str] = field(default_factory=list)  # the values, for the masker

    def restore(self) -> bool:
        """Put the credentials back (after the agent has ended); False when ``.git`` is no
        longer a real directory (nothing is written then)."""
        root = self.root
        if root.is_symlink() or not _real_file(self.config.parent, root):
            return False
        try:
            self._put_back()
        except OSError:
            return False
        return True

    def _put_back(self) -> None:
        try:
            current = self.config.read_bytes() if not self.config.is_symlink() else None
        except OSError:
            current = None
        if current == self.original:
            return  # never taken out (a run killed before it rewrote the file), or already back
        if current is None or current == self.sanitized:
            _replace(self.config, self.original)
            return
        text = current.decode("utf-8", "surrogateescape")
        lines = text.splitlines(keepends=True)
        for hidden, original in self.urls:
            lines = [original if line == hidden else line for line in lines]
        restored = "".join(lines)
        if restored and not restored.endswith("\n"):
            restored += "\n"
        present = set(lines)
        restored += "".join(sec + line for sec, line in self.headers if line not in present)
        _replace(self.config, restored.encode("utf-8", "surrogateescape"))

    def to_json(self) -> dict[str, object]:
        """What :meth:`from_json` needs to put the lines back (the values are not kept apart:
        they are in ``original``)."""
        return {
            "config": str(self.config),
            "root": str(self.root),
            "original": base64.b64encode(self.original).decode("ascii"),
            "sanitized": base64.b64encode(self.sanitized).decode("ascii"),
            "headers": self.headers,
            "urls": self.urls,
        }

    @classmethod
    def from_json(cls, entry: dict[str, object]) -> HiddenCredentials:
        def pairs(name: str) -> list[tuple[str, str]]:
            value = entry[name]
            assert isinstance(value, list)
            return [(str(a), str(b)) for a, b in value]

        return cls(
            Path(str(entry["config"])),
            Path(str(entry["root"])),
            base64.b64decode(str(entry["original"])),
            base64.b64decode(str(entry["sanitized"])),
            pairs("headers"),
            pairs("urls"),
        )


class CheckoutJournal:
    """The lines taken out, on disk until they are back, locked while this run lives."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def write(cls, directory: Path, hidden: list[HiddenCredentials]) -> CheckoutJournal:
        """Journal ``hidden`` (fsynced) before any config is rewritten."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = directory / f"{_JOURNAL}{os.getpid()}-{_random.token_hex(4)}.json"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = json.dumps({"version": 1, "entries": [h.to_json() for h in hidden]}).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return cls(path, fd)

    def done(self) -> None:
        """The lines are back (or cannot be): forget them."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def restore_abandoned(directory: Path) -> int:
    """Put back what runs that died left hidden (journals no live run holds); returns how many
    configs were restored. A journal that cannot be read is one whose run died before it
    touched any config (it is written and synced first): it is removed."""
    restored = 0
    for path in sorted(directory.glob(f"{_JOURNAL}*.json")) if directory.is_dir() else []:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live run's
        try:
            with os.fdopen(fd, "rb") as file:
                entries = json.loads(file.read())["entries"]
            hidden = [HiddenCredentials.from_json(entry) for entry in entries]
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            hidden = []
        restored += sum(1 for h in hidden if h.restore())
        path.unlink(missing_ok=True)
    return restored


def hide_checkout_credentials(
    workspace: str, journal_dir: Path | None = None
) -> tuple[list[HiddenCredentials], CheckoutJournal | None]:
    """Take the job's git credentials out of ``<workspace>/.git/config`` and the submodules'
    configs under ``.git/modules`` (actions/checkout writes the header there too); one entry
    per file that held some, and the journal (in ``journal_dir``) that holds them until
    :meth:`CheckoutJournal.done`."""
    git = Path(workspace, ".git")
    if git.is_symlink() or not git.is_dir():
        return [], None
    configs = [git / "config"]
    modules = git / "modules"
    if modules.is_dir() and not modules.is_symlink():
        configs += sorted(p for p in modules.rglob("config") if _real_file(p, git))
    planned = [_plan(config) for config in configs if _real_file(config, git)]
    hidden = [h for h in planned if h is not None]
    if not hidden:
        return [], None
    journal = CheckoutJournal.write(journal_dir, hidden) if journal_dir is not None else None
    for entry in hidden:
        _replace(entry.config, entry.sanitized)
    return hidden, journal


def _real_file(path: Path, root: Path) -> bool:
    """A regular file reached from ``root`` without a symlink on the way."""
    while path != root:
        if path.is_symlink():
            return False
        path = path.parent
    return True


def _plan(config: Path) -> HiddenCredentials | None:
    if not config.is_file():
        return None
    original = config.read_bytes()
    hidden = HiddenCredentials(config, _git_root(config), original, b"")
    kept: list[str] = []
    section = ""
    for line in original.decode("utf-8", "surrogateescape").splitlines(keepends=True):
        if _SECTION.match(line):
            section = line if line.endswith("\n") else line + "\n"
        if _EXTRAHEADER.match(line):
            hidden.headers.append((section, line if line.endswith("\n") else line + "\n"))
            hidden.secrets += _header_secrets(line.split("=", 1)[1])
            continue
        match = _USERINFO_URL.match(line)
        if match is not None:
            without = match.group("head") + line[match.end() :]
            hidden.urls.append((without, line))
            hidden.secrets += _userinfo_secrets(match.group("userinfo"))
            line = without
        kept.append(line)
    if not hidden.headers and not hidden.urls:
        return None
    hidden.sanitized = "".join(kept).encode("utf-8", "surrogateescape")
    return hidden


def _git_root(config: Path) -> Path:
    for parent in config.parents:
        if parent.name == ".git":
            return parent
    return config.parent


def _header_secrets(value: str) -> list[str]:
    """``AUTHORIZATION: basic BASE64(user:token)`` (or bearer TOKEN): the encoded and the
    decoded values."""
    words = value.split()
    if not words:
        return []
    found = [words[-1]] if len(words[-1]) >= _MIN_SECRET else []
    if len(words) >= 2 and words[-2].lower() == "basic":
        try:
            decoded = base64.b64decode(words[-1], validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return found
        found += _userinfo_secrets(decoded)
    return found


def _userinfo_secrets(userinfo: str) -> list[str]:
    _, sep, password = userinfo.partition(":")
    value = password if sep else userinfo
    return [value] if len(value) >= _MIN_SECRET else []


def _replace(config: Path, data: bytes) -> None:
    """``data`` as ``config``: a new file in the same directory, renamed over it."""
    mode = 0o644
    with contextlib.suppress(OSError):
        mode = config.stat().st_mode & 0o777 if not config.is_symlink() else mode
    temporary = config.with_name(f".{config.name}.airlock-{os.getpid()}")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    temporary.replace(config)
