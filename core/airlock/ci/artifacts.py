"""Writing the job's artifacts into a directory that someone else may have filled first.

GitLab's artifacts directory (``$CI_PROJECT_DIR/airlock``) is inside the checkout: the agent
could write there during its session, and a merge request can commit anything there. Finalize
runs afterwards, outside the sandbox, as the runner's user, so it trusts no name it finds:

- every directory from the project directory down to the artifacts directory must be a real
  directory: a symlink or file in its place is removed and a directory made;
- a file is written by removing whatever holds its name (symlink, hard link, file, directory)
  and creating a new one with ``O_EXCL | O_NOFOLLOW``: a planted symlink can never redirect the
  write outside the project, a hard link never carries it into another file.

Nothing else runs in the job's sandbox by then (its PID namespace ended with the agent), so no
one swaps a name between the check and the write.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

__all__ = ["copy_sessions", "real_directory", "replace_file"]


def real_directory(directory: Path, project: Path | None = None) -> Path:
    """``directory``, made a real directory, as is every component below ``project``."""
    directory = _absolute(directory)
    top = _absolute(project) if project is not None else directory.parent
    if top not in directory.parents:
        top = directory.parent
    top.mkdir(parents=True, exist_ok=True)
    below = [directory, *(p for p in directory.parents if top in p.parents)]
    for path in reversed(below):
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink()
        path.mkdir(exist_ok=True)
    return directory


def replace_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a new file at ``path``, whatever held the name before."""
    _remove(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask does not decide: the mode is the caller's
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def copy_sessions(sessions: Iterable[Path], into: Path) -> None:
    """Copy each session directory into ``into``, a fresh real directory: what was there (a
    session the agent forged, say) is removed first, unless ``into`` is itself where the
    sessions are (a later job that archives the artifacts: nothing is copied then)."""
    sessions = list(sessions)
    if not _holds(into, sessions):
        _remove(into)
    into = real_directory(into)
    for session in sessions:
        target = into / session.name
        if not target.exists():
            shutil.copytree(session, target, symlinks=True)


def _holds(directory: Path, sessions: list[Path]) -> bool:
    """True when ``directory`` (a real directory, not a symlink) holds one of ``sessions``."""
    if directory.is_symlink() or not directory.is_dir():
        return False
    real = directory.resolve()
    return any(real in session.resolve().parents for session in sessions)


def _absolute(path: Path) -> Path:
    """Absolute and normalised, symlinks left unresolved: they are what is checked."""
    return Path(os.path.normpath(path.absolute()))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()
