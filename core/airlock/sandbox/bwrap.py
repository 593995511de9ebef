"""The bubblewrap command line for a :class:`~airlock.sandbox.spec.SandboxSpec`.

The root is built from explicit binds, never ``--bind / /``: system directories read-only, the
workspace read-write, fresh tmpfs for /tmp, /var, /run and $HOME, a fresh /proc for the new PID
namespace and a minimal /dev. Hidden paths are covered last (an empty read-only tmpfs for a
directory, /dev/null for a file), after every bind that could otherwise reveal them.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from airlock.sandbox.spec import SandboxSpec

__all__ = ["BRIDGE_DIR", "RELAY_DIR", "SYSTEM_DIRS", "BwrapCommand", "find_bwrap", "relay_python"]

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")
RELAY_DIR = "/run/airlock/bin"
BRIDGE_DIR = "/run/airlock/net"
_HERE = Path(__file__).resolve().parent
_FRESH = ("/tmp", "/var", "/run")  # noqa: S108 (fresh tmpfs mounts inside the sandbox)
_VAR_TMP = "/var/tmp"  # noqa: S108
_NAMESPACES = (
    "--unshare-user",
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-net",
    "--unshare-cgroup-try",
)


def find_bwrap() -> str | None:
    return shutil.which("bwrap")


def relay_python() -> str:
    """A python3 the sandbox can run: the system's, else the one running Airlock."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return os.path.realpath(sys.executable)


@dataclass(frozen=True)
class BwrapCommand:
    """``bwrap`` argv for one sandbox; ``seccomp_fd`` must be inherited by bwrap."""

    bwrap: str
    spec: SandboxSpec
    seccomp_fd: int | None
    bridge_dir: str | None = None  # host dir of the Unix sockets, shown at BRIDGE_DIR
    tty: bool = False  # stdin is the agent's own pty: show it as /dev/tty too

    def argv(self, command: list[str]) -> list[str]:
        return [self.bwrap, *self.options(), "--", *command]

    def relay_argv(
        self, pairs: list[tuple[int, str]], command: list[str], check: list[str] | None = None
    ) -> list[str]:
        """The command behind the in-sandbox relay, which runs the self-check (``check``: the
        relay's options for it) and bridges ``pairs`` (port, socket name) before the command."""
        if not pairs and not check:
            return self.argv(command)
        bridged = [f"{port}={BRIDGE_DIR}/{name}" for port, name in pairs]
        relay = [relay_python(), "-I", "-S", f"{RELAY_DIR}/_relay.py", *(check or []), *bridged]
        return self.argv([*relay, "--", *command])

    def options(self) -> list[str]:
        spec = self.spec
        opts = [*_NAMESPACES, "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        opts += ["--uid", str(spec.uid), "--gid", str(spec.gid), "--hostname", "airlock-sandbox"]
        opts += _system_binds(relay_python())
        opts += ["--proc", "/proc", "--dev", "/dev"]
        if self.tty:
            # The sandbox has no controlling terminal (--new-session), so /dev/tty would not
            # open; bind the agent's own pty there (bwrap's fd 0, resolved on the host side).
            # It is the session's pty, never Airlock's terminal, and TIOCSTI stays refused.
            opts += ["--dev-bind", "/proc/self/fd/0", "/dev/tty"]
        for tmp in _FRESH:
            opts += ["--tmpfs", tmp]
        opts += ["--dir", _VAR_TMP, "--tmpfs", spec.home]
        opts += ["--bind", spec.workspace, spec.workspace]
        opts += _path_binds(spec)
        opts += ["--ro-bind", str(_HERE / "_relay.py"), f"{RELAY_DIR}/_relay.py"]
        opts += ["--ro-bind", str(_HERE / "_probes.py"), f"{RELAY_DIR}/_probes.py"]
        if self.bridge_dir is not None:
            opts += ["--ro-bind", self.bridge_dir, BRIDGE_DIR]
        opts += _covers(spec)
        opts += ["--remount-ro", "/", "--chdir", spec.workspace]
        if self.seccomp_fd is not None:
            opts += ["--seccomp", str(self.seccomp_fd)]
        return opts


def _path_binds(spec: SandboxSpec) -> list[str]:
    """The policy's paths after the workspace, outermost first: a read-only path inside the
    workspace (or inside a ``read_write`` path) is bound on top of it and stays read-only, and
    a ``read_write`` path inside a read-only one stays writable."""
    binds = [(p, "--ro-bind-try") for p in (*spec.home_files, *spec.read_only)]
    binds += [(p, "--bind-try") for p in spec.read_write]
    opts: list[str] = []
    for path, flag in sorted(binds, key=lambda bind: len(Path(bind[0]).parts)):
        opts += [flag, path, path]
    return opts


def _system_binds(python: str) -> list[str]:
    opts: list[str] = []
    for path in SYSTEM_DIRS:
        if Path(path).is_symlink():
            opts += ["--symlink", str(Path(path).readlink()), path]
        elif Path(path).is_dir():
            opts += ["--ro-bind", path, path]
    if not any(python.startswith(d + "/") for d in SYSTEM_DIRS):  # a python outside /usr
        prefix = str(Path(python).parent.parent)
        opts += ["--ro-bind", prefix, prefix]
    return opts


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def covered_paths(spec: SandboxSpec) -> list[str]:
    """The hidden paths that bwrap must cover: those that exist and are inside a bind.

    A hidden path outside every bind shows nothing. One that holds the workspace (or another
    bind) shows only the directories leading to it, and covering it would hide the workspace:
    the files it holds that matter (the runner's GITHUB_ENV...) are listed on their own.
    """
    binds = (spec.workspace, *spec.read_write, *spec.read_only, *spec.home_files)
    roots = (*SYSTEM_DIRS, *binds)
    return [
        path
        for path in spec.hidden
        if any(_under(path, r) for r in roots)
        and not any(_under(b, path) for b in binds)
        and os.path.lexists(path)
    ]


def probed_paths(spec: SandboxSpec) -> list[str]:
    """The hidden paths the self-check tries to read: all but those that hold a bind."""
    binds = (spec.workspace, *spec.read_write, *spec.read_only, *spec.home_files)
    return [path for path in spec.hidden if not any(_under(b, path) for b in binds)]


def _pinned_parents(spec: SandboxSpec) -> list[str]:
    """The directories between a writable bind and a hidden path or pinned file inside it,
    outermost first.

    Each is bound read-only onto itself: a mount point cannot be renamed, so the agent cannot
    carry a hidden path (still covered, and still Airlock's live session directory) away from
    the name Airlock writes it by (``mv .airlock .moved`` before the seal), nor move the policy
    file aside and write another for the job's next session.
    """
    writable = (spec.workspace, *spec.read_write)
    pinned: list[str] = []
    for path in (*covered_paths(spec), *_pinned_files(spec)):
        for root in writable:
            parent = str(Path(path).parent)
            while path != root and _under(parent, root) and parent != root:
                pinned.append(parent)
                parent = str(Path(parent).parent)
    return sorted(dict.fromkeys(pinned), key=len)


def _pinned_files(spec: SandboxSpec) -> list[str]:
    """The pinned files (the policy) that exist inside a writable bind."""
    writable = (spec.workspace, *spec.read_write)
    return [
        path
        for path in spec.pinned
        if Path(path).is_file() and any(_under(path, root) for root in writable)
    ]


def _covers(spec: SandboxSpec) -> list[str]:
    opts: list[str] = []
    for path in (*_pinned_parents(spec), *_pinned_files(spec)):
        opts += ["--ro-bind", path, path]
    for path in covered_paths(spec):
        if Path(path).is_dir() and not Path(path).is_symlink():
            opts += ["--tmpfs", path, "--remount-ro", path]
        else:
            opts += ["--ro-bind", "/dev/null", path]
    return opts
