"""Run one command under capture: a pseudo-terminal or pipes, the exec tracer, signal forwarding.

The runner knows nothing about masking or logs. It hands raw output to ``on_output`` (which
masks, shows and records it) and process events to ``on_process``; ``on_idle`` is called when
the output has been quiet for ``idle_seconds``, so held-back bytes (a prompt) can be shown.
Everything runs in one thread around one selector; only a pty is read by a thread of its own
(:mod:`.drain`), whose bytes the loop takes and hands on in order.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from selectors import EVENT_READ, PollSelector, SelectorKey

from airlock.capture import _fdio, _procs
from airlock.capture.drain import Drain, open_drain
from airlock.capture.exectrace import ExecTraceParser, ProcessExec, ProcessExit
from airlock.capture.tracer import TracerStatus
from airlock.errors import InfrastructureUnavailable

__all__ = ["Command", "ProcessRunner", "RunResult"]

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_READ_SIZE = 1 << 20
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031
_WATCHED_SIGNALS = (*FORWARDED_SIGNALS, signal.SIGWINCH, signal.SIGCHLD)
_DRAIN_GRACE = 2.0
# Seconds between two reads of a busy trace FIFO: strace writes a line per system call, and each
# wake of this loop costs more (cold caches) than parsing the lines it brings. The pause grows
# while the trace stays busy and shrinks back when it calms down; a stream read drains the
# trace first, so a process's exec is still recorded before the output it writes.
_TRACE_BATCH = 0.01
_TRACE_BATCH_MAX = 0.08
_TRACE_BUSY = 2048  # bytes read in one batch that count as busy (a short process: ~350)
# A trickle of output that never goes quiet is still released this often (seconds), so a slow
# progress bar is not held back until the masker's look-behind window fills.
_MAX_HOLD = 0.25  # seconds to keep reading after the command exits (orphans holding the pipe)

OutputHandler = Callable[[str, bytes], None]
ProcessHandler = Callable[[ProcessExec | ProcessExit], None]


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    pass_fds: tuple[int, ...] = ()  # inherited by the command (the sandbox's seccomp filter)


@dataclass
class RunResult:
    exit_status: int  # shell convention: the code, or 128 + signal number
    signal: str | None = None
    forwarded: list[str] = field(default_factory=list)
    trace_unparsed: int = 0
    leftovers_stopped: bool = False  # processes were left behind, and all of them are gone now
    leftovers_remaining: int = 0  # left behind and still alive after SIGKILL
    tracer_lost: bool = False  # the exec tracer ended while the command ran (best_effort)


@dataclass
class _Stream:
    name: str
    fd: int
    open: bool = True
    drain: Drain | None = None  # a thread reads fd (a pty); the loop takes what it read

    def watched(self) -> int:
        return self.drain.fileno() if self.drain is not None else self.fd


class ProcessRunner:
    """Spawn ``command`` (under strace when ``tracer`` is given) and pump its output."""

    def __init__(
        self,
        command: Command,
        *,
        use_pty: bool,
        tracer: TracerStatus | None,
        on_output: OutputHandler,
        on_process: ProcessHandler,
        on_idle: Callable[[], None],
        on_signal: Callable[[str], None] = lambda _name: None,
        idle_seconds: float = 0.03,
        tracer_required: bool = False,
        on_spawn: Callable[[], None] = lambda: None,
    ) -> None:
        self._command = command
        self._use_pty = use_pty
        self._tracer = tracer if tracer is not None and tracer.available else None
        self._on_output = on_output
        self._on_process = on_process
        self._on_idle = on_idle
        self._on_signal = on_signal
        self._idle = idle_seconds
        self._parser: ExecTraceParser | None = None
        self._trace_buf = b""
        self._master = -1
        self._root_exit: ProcessExit | None = None
        self._tracer_required = tracer_required
        self._on_spawn = on_spawn
        self._tracer_pid: int | None = None
        self._fifo_keepalive = -1
        self._trace_open = False
        self._tracer_lost = False
        self._trace_resume: float | None = None  # the trace FIFO is read again from then on
        self._trace_pause = _TRACE_BATCH
        self._fifo_fd = -1
        self._trace_read = 0  # bytes the last reads of the FIFO brought

    def run(self) -> RunResult:
        with contextlib.ExitStack() as stack:
            fifo_fd = self._open_trace_fifo(stack) if self._tracer else None
            try:
                streams, stdin_fd, proc = self._spawn(stack)
            finally:
                self._on_spawn()  # spawned or not: the caller may drop the fds it passed
            try:
                return self._pump(proc, streams, stdin_fd, fifo_fd, stack)
            except BaseException:
                _procs.stop(proc)  # we can no longer record: the command must not go on unrecorded
                raise

    # -- setup ---------------------------------------------------------------------------------

    def _open_trace_fifo(self, stack: contextlib.ExitStack) -> int:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="airlock-trace-"))
        self._fifo_path = str(Path(tmp) / "trace")
        os.mkfifo(self._fifo_path, 0o600)
        read_fd = os.open(self._fifo_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        # Room for a burst of processes: strace (and so the traced command) waits on a full
        # FIFO, and 64 KiB is only ~130 short-lived processes.
        with contextlib.suppress(OSError):
            fcntl.fcntl(read_fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        # Keep a writer of our own open so reads never see EOF before strace has even started.
        keep = os.open(self._fifo_path, os.O_WRONLY | os.O_CLOEXEC)
        stack.callback(os.close, read_fd)
        self._fifo_keepalive = keep
        self._parser = ExecTraceParser(root_ppid=None, root_cwd=self._command.cwd)
        return read_fd

    def _argv(self) -> list[str]:
        if self._tracer is None:
            return list(self._command.argv)
        assert self._tracer.path is not None
        return [
            self._tracer.path,
            *self._tracer.args,
            "-o",
            self._fifo_path,
            "--",
            *self._command.argv,
        ]

    def _spawn(
        self, stack: contextlib.ExitStack
    ) -> tuple[list[_Stream], int | None, subprocess.Popen[bytes]]:
        if self._use_pty:
            return self._spawn_pty(stack)
        proc = subprocess.Popen(
            self._argv(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._command.env,
            cwd=self._command.cwd,
            pass_fds=self._command.pass_fds,
            process_group=0,
        )
        assert proc.stdout is not None and proc.stderr is not None
        stack.callback(proc.stdout.close)
        stack.callback(proc.stderr.close)
        streams = [_Stream("stdout", proc.stdout.fileno()), _Stream("stderr", proc.stderr.fileno())]
        for stream in streams:
            os.set_blocking(stream.fd, False)
            with contextlib.suppress(OSError):
                fcntl.fcntl(stream.fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        return streams, None, proc

    def _spawn_pty(
        self, stack: contextlib.ExitStack
    ) -> tuple[list[_Stream], int | None, subprocess.Popen[bytes]]:
        master, slave = os.openpty()
        stack.callback(os.close, master)
        self._master = master
        _fdio.copy_winsize(1, master)
        proc = subprocess.Popen(
            self._argv(),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=self._command.env,
            cwd=self._command.cwd,
            pass_fds=self._command.pass_fds,
            start_new_session=True,
            preexec_fn=_fdio.take_controlling_tty,
        )
        os.close(slave)
        os.set_blocking(master, False)
        drain = open_drain(master)
        if drain is not None:
            stack.callback(drain.close)  # before the master is closed (callbacks run LIFO)
        stdin_fd: int | None = None
        if os.isatty(0):
            stack.enter_context(_fdio.raw_terminal(0))
            stdin_fd = 0
        elif not _fdio.is_closed(0):
            stdin_fd = 0
        return [_Stream("pty", master, drain=drain)], stdin_fd, proc

    # -- the loop --------------------------------------------------------------------------------

    def _pump(
        self,
        proc: subprocess.Popen[bytes],
        streams: list[_Stream],
        stdin_fd: int | None,
        fifo_fd: int | None,
        stack: contextlib.ExitStack,
    ) -> RunResult:
        result = RunResult(exit_status=0)
        sel = stack.enter_context(PollSelector())  # poll, not epoll: stdin may be a regular file
        wake_r = stack.enter_context(_fdio.signal_wakeup(_WATCHED_SIGNALS))
        sel.register(wake_r, EVENT_READ, "signal")
        for stream in streams:
            sel.register(stream.watched(), EVENT_READ, stream)
        if fifo_fd is not None:
            sel.register(fifo_fd, EVENT_READ, "trace")
            self._fifo_fd = fifo_fd
        if stdin_fd is not None:
            sel.register(stdin_fd, EVENT_READ, "stdin")
        self._pending_signals: list[int] = []
        self._proc = proc
        deadline: float | None = None
        last_release = quiet_since = time.monotonic()
        while True:
            quiet = self._idle if deadline is None else min(self._idle, 0.05)
            ready = sel.select(self._wait(quiet, quiet_since))
            now = time.monotonic()
            if not ready and now - quiet_since >= quiet:
                self._on_idle()
                last_release = quiet_since = now  # the next quiet spell starts now
            elif now - last_release > _MAX_HOLD:
                self._on_idle()
                last_release = now
            for key, _ in ready:
                self._dispatch(key, sel, streams)
            if ready:
                quiet_since = time.monotonic()
            self._resume_trace(sel, fifo_fd)
            self._forward_signals(result)
            self._check_tracer(result)
            ended = proc.poll() is not None or self._root_exit is not None
            if ended and deadline is None:
                deadline = time.monotonic() + _DRAIN_GRACE
            open_streams = any(s.open for s in streams)
            if deadline is not None and (not open_streams or time.monotonic() > deadline):
                break
        self._take_drained(streams)
        # Whatever the command left running would go on unrecorded after the seal: its process
        # group, and every traced process that left it (setsid daemons).
        left = _procs.end_group(proc)
        left |= self._end_traced(signal.SIGTERM)
        if left:
            _procs.wait_gone(
                lambda: self._traced_alive() or _procs.group_pids(proc), _procs.LEFTOVER_GRACE
            )
            self._end_traced(signal.SIGKILL)
            _procs.kill_group(proc, signal.SIGKILL)
        self._finish_trace(fifo_fd, result)
        self._check_tracer(result)  # the end of the FIFO may have been read only now
        remaining = self._traced_alive() | _procs.group_pids(proc)
        result.leftovers_remaining = len(remaining)
        result.leftovers_stopped = left and not remaining
        self._on_idle()
        result.exit_status, result.signal = _procs.status(proc.wait())
        root = self._root_exit
        if root is not None and root.pid != proc.pid:  # an older strace without -DDD is our
            result.exit_status, result.signal = _exit_of(root)  # child: use the command's own
        return result

    def _wait(self, quiet: float, quiet_since: float) -> float:
        """How long to wait for the next event: until the output has been quiet for ``quiet``
        seconds, or sooner when the trace FIFO is due to be read again."""
        now = time.monotonic()
        wait = max(0.0, quiet_since + quiet - now)
        if self._trace_resume is not None:
            wait = min(wait, max(0.0, self._trace_resume - now))
        return wait

    def _resume_trace(self, sel: PollSelector, fifo_fd: int | None) -> None:
        if self._trace_resume is None or fifo_fd is None or time.monotonic() < self._trace_resume:
            return
        self._trace_resume = None
        sel.register(fifo_fd, EVENT_READ, "trace")

    def _trace_started(self) -> None:
        """strace wrote its first line (the command's exec): it holds the FIFO open and traces
        the command, so from now on EOF on the FIFO means the tracer is gone."""
        self._tracer_pid = _procs.tracer_of(self._proc.pid)
        os.close(self._fifo_keepalive)
        self._fifo_keepalive = -1
        self._trace_open = True

    def _check_tracer(self, result: RunResult) -> None:
        """The tracer ended while the command runs: fail closed, or note it (best effort)."""
        if not self._tracer_lost or result.tracer_lost:
            return
        result.tracer_lost = True
        if self._tracer_required:
            raise InfrastructureUnavailable(
                "the exec tracer (strace) stopped while the command was running; the command "
                "was stopped because exec capture is required",
                hint="check that nothing kills or ptrace-blocks strace on this runner, or set "
                "`capture: {exec: best_effort}` in the policy",
            )

    def _traced_alive(self) -> set[int]:
        """Live processes our tracer still traces (so they are ours: no pid reuse)."""
        if self._parser is None or self._tracer_pid is None:
            return set()
        return {pid for pid in self._parser.alive if _procs.tracer_of(pid) == self._tracer_pid}

    def _end_traced(self, signum: int) -> bool:
        alive = self._traced_alive()
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)
        return bool(alive)

    def _dispatch(self, key: SelectorKey, sel: PollSelector, streams: list[_Stream]) -> None:
        if key.data == "signal":
            with contextlib.suppress(BlockingIOError):
                self._pending_signals.extend(os.read(key.fd, 64))
        elif key.data == "trace":
            self._trace_read = 0
            if self._read_trace(key.fd, sel):
                # strace writes a line per system call, so a busy trace would wake this loop
                # for every process; read it in batches (the FIFO holds ~2,000 processes).
                sel.unregister(key.fd)
                self._trace_resume = time.monotonic() + self._next_trace_pause()
        elif key.data == "stdin":
            self._forward_stdin(sel, streams[0].fd)
        else:
            self._read_stream(key.data, sel)

    def _next_trace_pause(self) -> float:
        if self._trace_read >= _TRACE_BUSY:
            self._trace_pause = min(self._trace_pause * 2, _TRACE_BATCH_MAX)
        elif self._trace_read < _TRACE_BUSY // 4:
            self._trace_pause = max(self._trace_pause / 2, _TRACE_BATCH)
        return self._trace_pause

    def _drain_trace(self, sel: PollSelector) -> None:
        """Read what the trace FIFO holds (paused or not) before output just read is handed
        over: strace writes a process's exec before the process runs on, so that exec is
        then recorded before the output the process wrote."""
        if not self._trace_open or self._fifo_fd < 0:
            return
        paused = self._trace_resume is not None  # then the FIFO is not registered
        if not self._read_trace(self._fifo_fd, None if paused else sel):
            self._trace_resume = None  # it ended: never register it again

    def _read_stream(self, stream: _Stream, sel: PollSelector) -> None:
        if stream.drain is not None:
            data, eof = stream.drain.take(_fdio.GATHER_SECONDS)
        else:
            data, eof = _fdio.read_available(stream.fd)
        if data:
            self._drain_trace(sel)
            self._on_output(stream.name, data)
        if eof:
            stream.open = False
            sel.unregister(stream.watched())

    def _take_drained(self, streams: list[_Stream]) -> None:
        """The loop ends with the pty still open (a process left behind holds it past the drain
        grace): what the drain thread read before then is recorded too, not dropped."""
        for stream in streams:
            if stream.open and stream.drain is not None:
                data, _ = stream.drain.take()
                if data:
                    self._on_output(stream.name, data)

    def _forward_stdin(self, sel: PollSelector, master: int) -> None:
        data = os.read(0, 65536)
        if not data:  # our stdin ended: tell the program the way a terminal would
            sel.unregister(0)
            with contextlib.suppress(OSError):
                os.write(master, b"\x04")
            return
        with contextlib.suppress(OSError):
            _fdio.write_all(master, data)

    def _read_trace(self, fd: int, sel: PollSelector | None = None) -> bool:
        """Read what the tracer wrote; False once it closed the FIFO (the tracer ended)."""
        assert self._parser is not None
        while True:
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                return True
            if not data:
                break
            self._trace_read += len(data)
            if self._fifo_keepalive >= 0:
                self._trace_started()
            for event in self._parser.feed(self._decode_trace(data)):
                self._seen(event)
        if self._trace_open:
            self._trace_open = False
            if sel is not None:
                sel.unregister(fd)
            if self._root_exit is None and self._tracer_went_first():
                self._tracer_lost = True
        return False

    def _tracer_went_first(self) -> bool:
        """The trace ended without the command's end: did the tracer die first?

        Yes while the command runs. Yes too when the command has since exited on its own and the
        trace never showed that exit, which strace writes before it ends (the command's next
        fork fails once the seccomp filter has no tracer left, so it may exit before the end
        of the FIFO is read). A command killed by a signal can take strace's last lines with it
        (strace re-raises the signal on itself): that is not a lost tracer.
        """
        status = self._proc.poll()
        if status is None:
            return True
        assert self._parser is not None
        root = self._parser.root_pid
        return status >= 0 and root is not None and root in self._parser.alive

    def _seen(self, event: ProcessExec | ProcessExit) -> None:
        if isinstance(event, ProcessExit) and self._parser and event.pid == self._parser.root_pid:
            self._root_exit = event
        self._on_process(event)

    def _decode_trace(self, data: bytes) -> str:
        # strace escapes non-ASCII bytes, so its output is ASCII; keep a split tail anyway.
        data = self._trace_buf + data
        cut = data.rfind(b"\n") + 1
        self._trace_buf = data[cut:]
        return data[:cut].decode("ascii", errors="replace")

    def _finish_trace(self, fifo_fd: int | None, result: RunResult) -> None:
        if fifo_fd is None or self._parser is None:
            return
        if self._fifo_keepalive >= 0:  # strace never wrote a line
            os.close(self._fifo_keepalive)
            self._fifo_keepalive = -1
            self._trace_open = True
        # strace ends once every traced process has: read its last lines (exits) until then.
        deadline = time.monotonic() + _DRAIN_GRACE
        while self._trace_open and self._read_trace(fifo_fd):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            select.select([fifo_fd], [], [], remaining)
        tail = self._trace_buf.decode("ascii", errors="replace")
        self._trace_buf = b""
        for event in self._parser.feed(tail) + self._parser.close():
            self._seen(event)
        result.trace_unparsed = self._parser.unparsed_lines

    def _forward_signals(self, result: RunResult) -> None:
        while self._pending_signals:
            signum = self._pending_signals.pop(0)
            if signum == signal.SIGWINCH:
                if self._use_pty:
                    _fdio.copy_winsize(1, self._master)
                continue
            if signum not in FORWARDED_SIGNALS:
                continue
            name = signal.Signals(signum).name
            result.forwarded.append(name)
            self._on_signal(name)
            # The whole process group, as a terminal would: a shell waiting on `sleep` only acts
            # on the signal once its child has it too. (strace, the group leader under tracing,
            # blocks fatal signals when it runs a command with -o.)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signum)


def _exit_of(event: ProcessExit) -> tuple[int, str | None]:
    if event.signal is not None:
        return 128 + int(signal.Signals[event.signal]), event.signal
    return event.status or 0, None
