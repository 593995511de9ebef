"""Sans-I/O parser of ``strace -f`` output: text lines in, process events out.

We run ``strace -DDD -f --seccomp-bpf --pidns-translation -q -ttt -y -s 65536 -e signal=none
-e trace=execve,execveat,exit_group,chdir,fchdir,clone,clone3,fork,vfork -o FIFO -- CMD``
and feed what it writes to :class:`ExecTraceParser`. strace interleaves processes: a call may
be split into ``<unfinished ...>`` and ``<... NAME resumed>`` halves, and a child's first call can
appear before its parent's ``clone`` returns. So exec events are held until the parent of the pid
is known (or the trace ends) and are then released in order.

Inside the sandbox's PID namespace a ``clone`` returns the child's pid *in that namespace*, while
strace names processes by their pid in its own; ``--pidns-translation`` adds the latter
(``= 3 /* 4711 in strace's PID NS */``), which is the one we link parents by.

An exec of an open file rather than a path (``fexecve``: ``execveat(fd, "", …, AT_EMPTY_PATH)``,
or ``execve("/proc/self/fd/N")``) is marked ``fileless``; its path is what ``-y`` shows the fd
to be (``/memfd:x (deleted)`` for a memfd), never the ``argv[0]`` the process chose.

No sockets or files here: tests feed lines one byte at a time.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = [
    "STRACE_ARGS",
    "ExecTraceParser",
    "ProcessExec",
    "ProcessExit",
    "parse_c_string",
]

STRACE_ARGS = (
    # The tracer runs as a detached grandchild in its own session: the command is Airlock's
    # own child, leads its own process group (and, with a pty, session), gets the terminal's
    # SIGHUP, and its exit status is its own.
    "-DDD",
    "-f",
    "--seccomp-bpf",
    "--pidns-translation",
    "-q",
    "-ttt",
    "-y",
    "-s",
    "65536",
    "-e",
    "signal=none",
    "-e",
    "trace=execve,execveat,exit_group,chdir,fchdir,clone,clone3,fork,vfork",
)

_LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
_CALL = re.compile(r"^([a-z_0-9]+)\((.*)$")
_RESUMED = re.compile(r"^<\.\.\. ([a-z_0-9]+) resumed>(.*)$")
# The return value follows the last `) = `; what may follow it (an errno, a comment) holds no
# quote, so a `) = 0` written inside an argument string can never be taken for the result.
_RESULT = re.compile(r'\)\s+=\s+(-?\d+|\?)(?: /\* (\d+) in strace\'s PID NS \*/)?(?:\s[^"]*)?$')
_EXITED = re.compile(r"^\+\+\+ exited with (\d+) \+\+\+$")
_KILLED = re.compile(r"^\+\+\+ killed by (SIG[A-Z0-9]+)(?: \(core dumped\))? \+\+\+$")
# `-y` decorates an fd with what it is: `3</usr/bin>`, `AT_FDCWD</tmp>`; a deleted file or memfd as
# `3</memfd:x>(deleted)` (strace 6) or `3</memfd:x (deleted)>`.
_FD_PATH = re.compile(r"^(-?\d+|AT_FDCWD)<(.*)>(\(deleted\))?$")
_PROC_FD = re.compile(r"^/(?:proc/(?:self|thread-self|\d+)|dev)/fd/\d+$")
_UNFINISHED = " <unfinished ...>"
_FORKS = frozenset({"clone", "clone3", "fork", "vfork"})
_MAX_HELD = 1000  # events waiting for a parent pid; past this they go out without one


@dataclass(frozen=True)
class ProcessExec:
    pid: int
    ppid: int | None
    path: str
    argv: tuple[str, ...]
    cwd: str | None
    ts: float
    truncated: bool = False  # strace cut an argument (longer than -s)
    cut: tuple[int, ...] = ()  # which: argv indices, and -1 for the path
    fileless: bool = False  # the image came from an open fd (memfd, deleted file, /proc/*/fd/N)
    exec_fd: str | None = None  # that fd as strace showed it: `3</memfd:x (deleted)>`

    def exec_fields(self, mask: Callable[[str], str]) -> dict[str, object]:
        """The fields a ``process.exec`` event adds for a fileless exec (none otherwise);
        ``mask`` (``Masker.mask_text``) masks the fd's name, which the process chose."""
        if not self.fileless:
            return {}
        return {"fileless": True, **({"exec_fd": mask(self.exec_fd)} if self.exec_fd else {})}


@dataclass(frozen=True)
class ProcessExit:
    pid: int
    ts: float
    status: int | None = None
    signal: str | None = None


_ESCAPES = {"n": 10, "t": 9, "r": 13, "v": 11, "f": 12, "a": 7, "b": 8, "\\": 92, '"': 34}


_QUOTED = re.compile(r'"([^"\\]*(?:\\.[^"\\]*)*)"', re.DOTALL)  # one strace-quoted string
_ESCAPE = re.compile(rb"\\(x..|[0-9]{1,3}|.)", re.DOTALL)


def _unescape(match: re.Match[bytes]) -> bytes:
    code = match[1]
    if code[0] == 0x78:  # \xHH
        value = int(code[1:], 16)
    elif code[0] in b"0123456789":  # \ooo, octal
        value = int(code, 8) & 0xFF
    else:
        value = _ESCAPES.get(code.decode("latin-1"), code[0])
    return bytes((value,))


def parse_c_string(text: str, start: int) -> tuple[str, int, bool]:
    """Parse the strace-quoted string starting at ``text[start] == '"'``.

    Returns the decoded string (UTF-8, undecodable bytes as surrogate escapes: mask it with
    ``Masker.mask_text``, which gives clean text), the index just past it, and
    whether strace marked it truncated (a ``...`` right after the closing quote).
    """
    if text[start] != '"':
        raise ValueError("not a quoted string")
    quoted = _QUOTED.match(text, start)
    if quoted is None:
        raise ValueError("unterminated string")
    body = quoted[1]
    if "\\" in body:
        raw = _ESCAPE.sub(_unescape, body.encode())
        value = raw.decode("utf-8", errors="surrogateescape")  # exact bytes, for the masker
    else:
        value = body
    end = quoted.end()
    truncated = text.startswith("...", end)
    if truncated:
        end += 3
    return value, end, truncated


def _parse_string_list(text: str, start: int) -> tuple[tuple[str, ...], int, bool, tuple[int, ...]]:
    """Parse ``["a", "b"]`` (possibly ending in ``...``) starting at ``text[start] == '['``.

    Returns the items, the index past the list, whether anything was cut, and which items were.
    """
    items: list[str] = []
    cut_items: list[int] = []
    truncated = False
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == '"':
            value, i, cut = parse_c_string(text, i)
            if cut:
                cut_items.append(len(items))
            items.append(value)
            truncated |= cut
        elif ch == "]":
            return tuple(items), i + 1, truncated, tuple(cut_items)
        elif text.startswith("...", i):
            truncated = True
            i += 3
        else:
            i += 1
    raise ValueError("unterminated list")


class ExecTraceParser:
    """Turn strace lines into :class:`ProcessExec` / :class:`ProcessExit` events."""

    def __init__(self, *, root_ppid: int | None, root_cwd: str) -> None:
        self._root_ppid = root_ppid
        self._root_cwd = root_cwd
        self._root: int | None = None
        self._buffer = ""
        self._pending_call: dict[int, str] = {}
        self._parent: dict[int, int | None] = {}
        self._cwd: dict[int, str] = {}
        self._threads: set[int] = set()
        self._held: list[ProcessExec | ProcessExit] = []
        self._alive: set[int] = set()
        self.unparsed_lines = 0

    @property
    def alive(self) -> frozenset[int]:
        """Processes the trace has seen start and not yet end."""
        return frozenset(self._alive)

    @property
    def root_pid(self) -> int | None:
        """The first traced pid: the command itself."""
        return self._root

    def feed(self, data: str) -> list[ProcessExec | ProcessExit]:
        """Feed raw text (any split); return the events that are complete and releasable."""
        self._buffer += data
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            self._line(line)
        return self._release(final=False)

    def close(self) -> list[ProcessExec | ProcessExit]:
        """End of trace: parse what is left and release every held event."""
        if self._buffer:
            self._line(self._buffer)
            self._buffer = ""
        return self._release(final=True)

    def _release(self, *, final: bool) -> list[ProcessExec | ProcessExit]:
        out: list[ProcessExec | ProcessExit] = []
        final = final or len(self._held) > _MAX_HELD
        for i, event in enumerate(self._held):
            if not final and event.pid not in self._parent:
                self._held = self._held[i:]
                return out
            out.append(self._complete(event))
        self._held = []
        return out

    def _complete(self, event: ProcessExec | ProcessExit) -> ProcessExec | ProcessExit:
        if isinstance(event, ProcessExit):
            return event
        ppid = self._parent.get(event.pid)
        cwd = event.cwd or self._cwd.get(ppid) if ppid is not None else event.cwd
        if ppid == event.ppid and cwd == event.cwd:
            return event
        e = event  # built directly: dataclasses.replace costs ~4x more, once per process
        return ProcessExec(
            e.pid, ppid, e.path, e.argv, cwd, e.ts, e.truncated, e.cut, e.fileless, e.exec_fd
        )

    def _line(self, line: str) -> None:
        match = _LINE.match(line)
        if match is None:
            self.unparsed_lines += bool(line.strip())
            return
        pid, ts, rest = int(match[1]), float(match[2]), match[3]
        if self._root is None:
            self._root = pid
            self._parent[pid] = self._root_ppid
            self._cwd[pid] = self._root_cwd
            self._alive.add(pid)
        for event in self._statement(pid, ts, rest):
            self._held.append(event)

    def _statement(self, pid: int, ts: float, rest: str) -> Iterator[ProcessExec | ProcessExit]:
        if rest.startswith("+++"):
            yield from self._exit(pid, ts, rest)
            return
        resumed = _RESUMED.match(rest) if rest.startswith("<") else None
        if resumed:
            head = self._pending_call.pop(pid, None)
            if head is None:
                self.unparsed_lines += 1
                return
            rest = head + resumed[2]
        elif rest.endswith(_UNFINISHED):
            self._pending_call[pid] = rest[: -len(_UNFINISHED)]
            return
        call = _CALL.match(rest)
        # From the last quote on: the result holds none, and searching a quoted argument made
        # of `) = 1 ` repeated tried each candidate up to the quote (seconds for one line).
        result = _RESULT.search(rest, rest.rfind('"') + 1)
        if call is None or result is None:
            self.unparsed_lines += 1
            return
        ret = result[2] or result[1]  # a clone's child, by the pid strace names it by
        yield from self._syscall(pid, ts, call[1], call[2], ret)

    def _exit(self, pid: int, ts: float, rest: str) -> Iterator[ProcessExit]:
        if pid in self._threads:
            return
        self._alive.discard(pid)
        exited = _EXITED.match(rest)
        if exited:
            yield ProcessExit(pid, ts, status=int(exited[1]))
            return
        killed = _KILLED.match(rest)
        if killed:
            yield ProcessExit(pid, ts, signal=killed[1])
            return
        self.unparsed_lines += 1

    def _syscall(
        self, pid: int, ts: float, name: str, args: str, ret: str
    ) -> Iterator[ProcessExec]:
        if name in _FORKS:
            self._forked(pid, args, ret)
        elif name in ("chdir", "fchdir") and ret == "0":
            self._chdir(pid, name, args)
        elif name in ("execve", "execveat") and ret == "0":
            yield self._exec(pid, ts, name, args)

    def _forked(self, pid: int, args: str, ret: str) -> None:
        if not ret.isdigit():
            return
        child = int(ret)
        if "CLONE_THREAD" in args:
            self._threads.add(child)
            return
        self._parent[child] = pid
        self._alive.add(child)
        self._cwd.setdefault(child, self._cwd.get(pid, self._root_cwd))

    def _chdir(self, pid: int, name: str, args: str) -> None:
        if name == "chdir" and args.startswith('"'):
            target, _, _ = parse_c_string(args, 0)
        else:
            fd = _FD_PATH.match(args.split(")", 1)[0])
            if fd is None:
                return
            target = fd[2]
        base = self._cwd.get(pid, self._root_cwd)
        self._cwd[pid] = posixpath.normpath(posixpath.join(base, target))

    def _exec(self, pid: int, ts: float, name: str, args: str) -> ProcessExec:
        start = args.index('"')
        path, end, cut_path = parse_c_string(args, start)
        fileless, exec_fd = bool(_PROC_FD.match(path)), None
        if name == "execveat" and not path.startswith("/"):
            path, fileless, exec_fd = _execveat_target(args[:start].rstrip(", "), path, args, end)
        argv: tuple[str, ...] = ()
        cut_argv = False
        cut: tuple[int, ...] = ()
        bracket = args.find("[", end)
        if bracket != -1:
            argv, _, cut_argv, cut = _parse_string_list(args, bracket)
        self._threads.discard(pid)  # a thread that execs becomes the process
        cwd = self._cwd.get(pid)
        cut = ((-1,) if cut_path else ()) + cut
        truncated = cut_path or cut_argv
        return ProcessExec(pid, None, path, argv, cwd, ts, truncated, cut, fileless, exec_fd)


def _execveat_target(dirfd: str, path: str, args: str, end: int) -> tuple[str, bool, str | None]:
    """(path, fileless, exec_fd) of ``execveat(dirfd, path, …)`` with a relative ``path``.

    With ``AT_EMPTY_PATH`` and an empty path, the image is the fd itself: its path is what
    ``-y`` shows, and it is fileless unless that is a file still on disk. A relative path is
    joined to the directory the fd is (unknown when strace could not say: kept relative).
    """
    fd = _FD_PATH.match(dirfd)
    if path == "" and "AT_EMPTY_PATH" in args[end:]:
        if fd is None:
            return "", True, dirfd or None
        deleted = fd[3] is not None or fd[2].endswith(" (deleted)")
        target = fd[2].removesuffix(" (deleted)") + (" (deleted)" if deleted else "")
        fileless = deleted or not fd[2].startswith("/") or fd[2].startswith("/memfd:")
        return target, fileless, f"{fd[1]}<{target}>"
    if fd is None or not fd[2].startswith("/"):
        return path, False, None
    return posixpath.join(fd[2], path), False, None
