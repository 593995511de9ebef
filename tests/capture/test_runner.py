"""The process runner with real processes: pipes and a pty, the tracer, signals, exit codes."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import defaultdict

import pytest

from airlock.capture.exectrace import ProcessExec, ProcessExit
from airlock.capture.runner import Command, ProcessRunner, RunResult
from airlock.capture.tracer import probe_strace


class Recorder:
    def __init__(self) -> None:
        self.output: dict[str, bytearray] = defaultdict(bytearray)
        self.processes: list[ProcessExec | ProcessExit] = []
        self.idle = 0

    def on_output(self, stream: str, data: bytes) -> None:
        self.output[stream] += data

    def on_idle(self) -> None:
        self.idle += 1


def run(argv: list[str], *, pty: bool = False, trace: bool = False) -> tuple[RunResult, Recorder]:
    rec = Recorder()
    runner = ProcessRunner(
        Command(tuple(argv), dict(os.environ), os.getcwd()),
        use_pty=pty,
        tracer=probe_strace() if trace else None,
        on_output=rec.on_output,
        on_process=rec.processes.append,
        on_idle=rec.on_idle,
    )
    return runner.run(), rec


def test_pipes_keep_stdout_and_stderr_apart_and_pass_the_exit_status() -> None:
    result, rec = run(["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert result.exit_status == 7
    assert bytes(rec.output["stdout"]) == b"out\n"
    assert bytes(rec.output["stderr"]) == b"err\n"


def test_pty_mode_gives_the_command_a_terminal() -> None:
    code = "import os,sys; print(os.isatty(0), os.isatty(1), os.isatty(2)); sys.exit(3)"
    result, rec = run([sys.executable, "-c", code], pty=True)
    assert result.exit_status == 3
    assert b"True True True" in bytes(rec.output["pty"])


def test_large_output_arrives_whole() -> None:
    result, rec = run([sys.executable, "-c", "import sys; sys.stdout.write('x' * 5_000_000)"])
    assert result.exit_status == 0
    assert len(rec.output["stdout"]) == 5_000_000


def test_death_by_signal_is_reported_shell_style() -> None:
    result, _ = run(["sh", "-c", "kill -9 $$"])
    assert (result.exit_status, result.signal) == (128 + 9, "SIGKILL")


def test_traced_run_records_nested_processes_with_parents() -> None:
    script = "sh -c 'echo inner; exit 2'; /bin/true"
    result, rec = run(["sh", "-c", script], trace=True)
    assert result.exit_status == 0
    execs = [p for p in rec.processes if isinstance(p, ProcessExec)]
    root = execs[0]
    inner = next(e for e in execs if e.argv == ("sh", "-c", "echo inner; exit 2"))
    assert root.argv == ("sh", "-c", script)
    assert inner.ppid == root.pid
    assert any(e.path == "/bin/true" for e in execs)
    exits = {p.pid: p.status for p in rec.processes if isinstance(p, ProcessExit)}
    assert exits[inner.pid] == 2 and exits[root.pid] == 0
    assert bytes(rec.output["stdout"]) == b"inner\n"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
@pytest.mark.parametrize("trace", [False, True])
def test_signals_reach_the_command(signum: signal.Signals, trace: bool) -> None:
    code = (
        "import signal, sys, time\n"
        f"signal.signal(signal.{signum.name}, lambda s, f: (print('got', s, flush=True), sys.exit(42)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(20)\n"
    )
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signum))
    timer.start()
    try:
        result, rec = run([sys.executable, "-c", code], trace=trace)
    finally:
        timer.cancel()
    assert result.exit_status == 42
    assert f"got {int(signum)}".encode() in bytes(rec.output["stdout"])
    assert result.forwarded == [signum.name]


def test_an_exception_in_a_handler_stops_the_command() -> None:
    def explode(stream: str, data: bytes) -> None:
        raise RuntimeError("cannot record")

    runner = ProcessRunner(
        Command(("sh", "-c", "echo first; sleep 30"), dict(os.environ), os.getcwd()),
        use_pty=False,
        tracer=None,
        on_output=explode,
        on_process=lambda _e: None,
        on_idle=lambda: None,
    )
    with pytest.raises(RuntimeError):
        runner.run()


@pytest.mark.parametrize("trace", [False, True])
def test_sigterm_reaches_the_whole_process_group(trace: bool) -> None:
    # A shell waiting on a foreground child defers its own handling until that child ends; a
    # terminal signals the whole group, and so do we.
    script = "trap 'echo shell-got-term; exit 143' TERM; echo ready; sleep 30; echo not-reached"
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    started = time.monotonic()
    try:
        result, rec = run(["sh", "-c", script], trace=trace)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 15
    assert b"shell-got-term" in bytes(rec.output["stdout"])
    assert result.exit_status == 143


def test_a_probe_started_early_gives_the_same_answer_as_probing_now() -> None:
    from airlock.capture.prepare import start_probe

    assert start_probe(None)() == probe_strace(None)
    missing = start_probe("/nonexistent/strace")()
    assert not missing.available and "could not run" in missing.reason


def test_an_older_strace_without_dddd_still_gives_the_commands_status() -> None:
    from dataclasses import replace

    probed = probe_strace()
    older = replace(probed, args=tuple(a for a in probed.args if a != "-DDD"))
    rec = Recorder()
    runner = ProcessRunner(
        Command(("sh", "-c", "/bin/true; exit 7"), dict(os.environ), os.getcwd()),
        use_pty=False,
        tracer=older,
        on_output=rec.on_output,
        on_process=rec.processes.append,
        on_idle=rec.on_idle,
    )
    result = runner.run()
    assert result.exit_status == 7
    assert any(isinstance(p, ProcessExec) and p.path == "/bin/true" for p in rec.processes)


@pytest.mark.parametrize("trace", [False, True])
def test_a_quiet_command_is_not_polled_in_a_busy_loop(trace: bool) -> None:
    """While the command prints nothing, the runner sleeps between quiet checks: one idle call
    per 30 ms quiet spell at most (a busy loop made thousands in 0.6 s). A slow machine only
    makes fewer."""
    result, rec = run(["sleep", "0.6"], trace=trace)
    assert result.exit_status == 0
    assert 1 <= rec.idle <= 0.6 / 0.03 * 3


class Timeline(Recorder):
    """Output and process events in the order the runner handed them over."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []

    def on_output(self, stream: str, data: bytes) -> None:
        super().on_output(stream, data)
        self.order += [f"out:{word}" for word in data.decode().split()]

    def on_process(self, event: ProcessExec | ProcessExit) -> None:
        self.processes.append(event)
        if isinstance(event, ProcessExec) and event.path == "/bin/echo":
            self.order.append(f"exec:{event.argv[1]}")


def test_a_busy_trace_read_in_batches_loses_nothing_and_keeps_execs_ahead_of_output() -> None:
    # Enough processes that the trace FIFO is read in growing batches. Every exec is recorded
    # with its parent; and as a stream read drains the trace before handing over the output,
    # an echo's exec comes before its output nearly always (not always: an exec waits for its
    # parent's fork to return in the trace, which strace may write after the child printed).
    script = 'for i in $(seq 200); do /bin/true; /bin/true; /bin/echo "w$i"; done'
    rec = Timeline()
    runner = ProcessRunner(
        Command(("sh", "-c", script), dict(os.environ), os.getcwd()),
        use_pty=False,
        tracer=probe_strace(),
        on_output=rec.on_output,
        on_process=rec.on_process,
        on_idle=rec.on_idle,
    )
    assert runner.run().exit_status == 0
    words = [f"w{i}" for i in range(1, 201)]
    assert sorted(rec.order) == sorted([f"exec:{w}" for w in words] + [f"out:{w}" for w in words])
    execs = [e for e in rec.processes if isinstance(e, ProcessExec)]
    assert len(execs) == 602  # sh, seq, then 3 x 200
    assert {e.ppid for e in execs[1:]} == {execs[0].pid}
    late = [w for w in words if rec.order.index(f"out:{w}") < rec.order.index(f"exec:{w}")]
    assert len(late) < len(words) // 10  # main before the drain: 184-194 of 200 late


def test_the_trace_pause_grows_while_batches_are_busy_and_shrinks_back() -> None:
    runner = ProcessRunner(
        Command(("true",), {}, "/"),
        use_pty=False,
        tracer=None,
        on_output=lambda _s, _d: None,
        on_process=lambda _e: None,
        on_idle=lambda: None,
    )
    pauses = []
    for size in (400, 2048, 5000, 9000, 20000, 40000, 1500, 300, 100, 0, 0, 0):
        runner._trace_read = size  # bytes the last batch brought
        pauses.append(runner._next_trace_pause())
    assert pauses == [0.01, 0.02, 0.04, 0.08, 0.08, 0.08, 0.08, 0.04, 0.02, 0.01, 0.01, 0.01]


def test_pty_mode_reads_the_same_either_way(drain_way: str) -> None:
    code = "import os,sys; print(os.isatty(0), os.isatty(1)); sys.stdout.write('y' * 300000)"
    result, rec = run([sys.executable, "-c", code], pty=True)
    assert result.exit_status == 0
    assert bytes(rec.output["pty"]) == b"True True\r\n" + b"y" * 300000


def test_signals_reach_the_command_under_a_pty(drain_way: str) -> None:
    code = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda s, f: (print('got', s, flush=True), sys.exit(42)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(20)\n"
    )
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        result, rec = run([sys.executable, "-c", code], pty=True)
    finally:
        timer.cancel()
    assert result.exit_status == 42
    assert b"got 15" in bytes(rec.output["pty"])
    assert result.forwarded == ["SIGTERM"]
