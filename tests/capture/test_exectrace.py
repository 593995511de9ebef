"""The strace parser: real strace output, fed whole and one byte at a time."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.capture.exectrace import (
    STRACE_ARGS,
    ExecTraceParser,
    ProcessExec,
    ProcessExit,
    parse_c_string,
)

SAMPLE = """\
2037  1795627445.051532 execve("/usr/bin/sh", ["sh", "-c", "cd /tmp; ls \\"x\\\\y\\""], 0x7ffc /* 35 vars */) = 0
2037  1795627445.052371 chdir("/tmp")   = 0
2037  1795627445.052502 vfork( <unfinished ...>
2038  1795627445.052630 execve("/usr/bin/ls", ["ls", "-l", "\\303\\251t\\xe9"], 0x5601 /* 35 vars */ <unfinished ...>
2037  1795627445.052784 <... vfork resumed>) = 2038
2038  1795627445.052860 <... execve resumed>) = 0
2038  1795627445.054168 exit_group(0)   = ?
2038  1795627445.054329 +++ exited with 0 +++
2037  1795627445.054449 clone(child_stack=NULL, flags=CLONE_VM|CLONE_THREAD|CLONE_SIGHAND, tls=0x1) = 2040
2040  1795627445.054500 exit_group(0) = ?
2037  1795627445.054600 execve("/nope", ["nope"], 0x1 /* 1 var */) = -1 ENOENT (No such file or directory)
2037  1795627445.056779 exit_group(3)   = ?
2037  1795627445.056999 +++ killed by SIGKILL +++
"""


def _events(
    text: str, *, step: int | None = None, cwd: str = "/work"
) -> list[ProcessExec | ProcessExit]:
    parser = ExecTraceParser(root_ppid=1, root_cwd=cwd)
    out: list[ProcessExec | ProcessExit] = []
    if step is None:
        out += parser.feed(text)
    else:
        for i in range(0, len(text), step):
            out += parser.feed(text[i : i + step])
    return out + parser.close()


def test_sample_gives_execs_exits_parents_and_cwd() -> None:
    events = _events(SAMPLE)
    execs = [e for e in events if isinstance(e, ProcessExec)]
    exits = [e for e in events if isinstance(e, ProcessExit)]
    assert [e.path for e in execs] == ["/usr/bin/sh", "/usr/bin/ls"]
    assert execs[0].argv == ("sh", "-c", 'cd /tmp; ls "x\\y"')
    assert execs[0].ppid == 1 and execs[0].cwd == "/work"
    assert execs[1].ppid == 2037 and execs[1].cwd == "/tmp"
    assert execs[1].argv[2] == "\u00e9t\udce9"  # UTF-8 decoded, a lone byte kept as an escape
    assert [(e.pid, e.status, e.signal) for e in exits] == [
        (2038, 0, None),
        (2037, None, "SIGKILL"),
    ]


def test_one_byte_at_a_time_gives_the_same_events() -> None:
    assert _events(SAMPLE, step=1) == _events(SAMPLE)


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=200))
def test_any_split_gives_the_same_events(step: int) -> None:
    assert _events(SAMPLE, step=step) == _events(SAMPLE)


def test_child_exec_waits_for_its_parent_to_be_known() -> None:
    parser = ExecTraceParser(root_ppid=None, root_cwd="/")
    first = parser.feed(
        '10 1.0 execve("/bin/sh", ["sh"], 0x1 /* 1 var */) = 0\n'
        '11 1.1 execve("/bin/true", ["true"], 0x1 /* 1 var */) = 0\n'
    )
    assert [e.pid for e in first] == [10]  # pid 11's parent is not known yet
    second = parser.feed("10 1.2 clone(child_stack=NULL, flags=SIGCHLD) = 11\n")
    assert [(e.pid, e.ppid) for e in second if isinstance(e, ProcessExec)] == [(11, 10)]


@pytest.mark.parametrize(
    ("quoted", "expected", "truncated"),
    [
        ('"plain"', "plain", False),
        ('"a\\nb\\tc"', "a\nb\tc", False),
        ('"\\x41\\102"', "AB", False),
        ('"long"...', "long", True),
    ],
)
def test_c_strings(quoted: str, expected: str, truncated: bool) -> None:
    value, end, cut = parse_c_string(quoted, 0)
    assert (value, end, cut) == (expected, len(quoted), truncated)


def test_real_strace_output_parses(tmp_path: Path) -> None:
    out = tmp_path / "trace"
    script = "cd /; /bin/echo 'hello world' >/dev/null; (exit 4); sh -c 'exit 5'; true"
    subprocess.run(
        ["strace", *STRACE_ARGS, "-o", str(out), "--", "sh", "-c", script],
        check=False,
        cwd=tmp_path,
    )
    events = _events(out.read_text(), cwd=str(tmp_path))
    execs = [e for e in events if isinstance(e, ProcessExec)]
    assert execs[0].argv == ("sh", "-c", script) and execs[0].cwd == str(tmp_path)
    echo = next(e for e in execs if e.argv[:1] == ("/bin/echo",))
    assert echo.argv == ("/bin/echo", "hello world")
    assert echo.cwd == "/" and echo.ppid == execs[0].pid
    inner = next(e for e in execs if e.argv == ("sh", "-c", "exit 5"))
    statuses = {e.pid: e.status for e in events if isinstance(e, ProcessExit)}
    assert statuses[inner.pid] == 5
    assert os.path.basename(echo.path) == "echo"


def test_an_argument_cannot_hide_or_forge_a_result(tmp_path: Path) -> None:
    # `) = -1` inside an argument once made the parser take it for the syscall's result, so
    # the exec vanished from the log; `) = 0` in a failed exec's argv made it look successful.
    out = tmp_path / "trace"
    script = 'env true ") = -1 x"; /nonexistent/cmd ") = 0 y"; echo hi'
    subprocess.run(
        ["strace", *STRACE_ARGS, "-o", str(out), "--", "sh", "-c", script],
        check=False,
        cwd=tmp_path,
        capture_output=True,
    )
    execs = [e for e in _events(out.read_text(), cwd=str(tmp_path)) if isinstance(e, ProcessExec)]
    assert execs[0].argv == ("sh", "-c", script)
    assert any(e.argv == ("env", "true", ") = -1 x") for e in execs)
    assert not any("/nonexistent/cmd" in e.path for e in execs)


@pytest.mark.timeout(30)
def test_an_argument_built_to_backtrack_is_parsed_in_one_pass() -> None:
    """Arguments of `) = 1 ` up to strace's 64 KiB limit: the result search once tried every
    `)` up to the next quote, ~6 s of CPU per argument (a minute for this line, while the
    recorder could not read anything else); from the last quote on, milliseconds."""
    arg = (") = 1 " * 11_000)[:65_536]
    args = ", ".join(f'"{arg}"' for _ in range(10))
    line = f'7 1700000000.000001 execve("/bin/echo", ["echo", {args}], 0x1 /* 1 var */) = 0\n'
    (event,) = _events(line + "7 1700000000.1 +++ exited with 0 +++\n")[:1]
    assert isinstance(event, ProcessExec)
    assert event.argv == ("echo", *[arg] * 10)


def _strace_quote(raw: bytes, hex_escapes: bool) -> str:
    """Quote bytes the way strace does: printable ASCII as is, the rest escaped."""
    named = {10: "\\n", 9: "\\t", 13: "\\r", 11: "\\v", 12: "\\f", 34: '\\"', 92: "\\\\"}
    out = []
    for i, byte in enumerate(raw):
        if byte in named:
            out.append(named[byte])
        elif 32 <= byte < 127:
            out.append(chr(byte))
        elif hex_escapes:
            out.append(f"\\x{byte:02x}")
        else:  # octal, three digits when a digit follows (as strace writes it)
            digit_next = i + 1 < len(raw) and 48 <= raw[i + 1] <= 57
            out.append(f"\\{byte:03o}" if digit_next else f"\\{byte:o}")
    return '"' + "".join(out) + '"'


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200), hex_escapes=st.booleans(), cut=st.booleans())
def test_c_strings_round_trip(raw: bytes, hex_escapes: bool, cut: bool) -> None:
    quoted = _strace_quote(raw, hex_escapes) + ("..." if cut else "")
    text = f'execve({quoted}, ["x"]'
    value, end, truncated = parse_c_string(text, 7)
    assert value.encode("utf-8", "surrogateescape") == raw  # exact bytes, for the masker
    assert (end, truncated) == (7 + len(quoted), cut)


FILELESS = """\
10 1.0 execve("/usr/bin/python3", ["python3"], 0x1 /* 1 var */) = 0
10 1.1 clone(child_stack=NULL, flags=SIGCHLD) = 3 /* 11 in strace's PID NS */
11 1.2 execveat(3</memfd:x>(deleted), "", ["ls", "x"], 0x1 /* 0 vars */, AT_EMPTY_PATH) = 0
10 1.3 clone(child_stack=NULL, flags=SIGCHLD) = 4 /* 12 in strace's PID NS */
12 1.4 execveat(4</memfd:y (deleted)>, "", ["ls"], 0x1 /* 0 vars */, AT_EMPTY_PATH) = 0
10 1.5 clone(child_stack=NULL, flags=SIGCHLD) = 5 /* 13 in strace's PID NS */
13 1.6 execveat(4</usr/bin>, "echo", ["e"], 0x1 /* 0 vars */, 0) = 0
10 1.7 clone(child_stack=NULL, flags=SIGCHLD) = 6 /* 14 in strace's PID NS */
14 1.8 execve("/proc/self/fd/7", ["ls"], 0x1 /* 0 vars */) = 0
10 1.9 clone(child_stack=NULL, flags=SIGCHLD) = 7 /* 15 in strace's PID NS */
15 2.0 execveat(5</usr/bin/true>, "", ["x"], 0x1 /* 0 vars */, AT_EMPTY_PATH) = 0
10 2.1 clone(child_stack=NULL, flags=SIGCHLD) = 8 /* 16 in strace's PID NS */
16 2.2 execveat(AT_FDCWD</usr/bin>, "echo", ["e"], 0x1 /* 0 vars */, 0) = 0
"""


def test_fileless_execs_name_their_fd_and_parent() -> None:
    execs = [e for e in _events(FILELESS) if isinstance(e, ProcessExec)]
    got = [(e.pid, e.ppid, e.path, e.fileless, e.exec_fd) for e in execs[1:]]
    assert got == [
        (11, 10, "/memfd:x (deleted)", True, "3</memfd:x (deleted)>"),
        (12, 10, "/memfd:y (deleted)", True, "4</memfd:y (deleted)>"),
        (13, 10, "/usr/bin/echo", False, None),  # relative to the dir fd, resolved
        (14, 10, "/proc/self/fd/7", True, None),
        (15, 10, "/usr/bin/true", False, "5</usr/bin/true>"),  # fexecve of a file on disk
        (16, 10, "/usr/bin/echo", False, None),  # AT_FDCWD: the cwd strace shows
    ]
    assert execs[1].exec_fields(str.upper) == {"fileless": True, "exec_fd": "3</MEMFD:X (DELETED)>"}
    assert execs[3].exec_fields(str.upper) == {}


def test_real_fileless_exec_in_a_pid_namespace(tmp_path: Path) -> None:
    out = tmp_path / "trace"
    script = (
        "import os\n"
        "fd = os.memfd_create('img')\n"
        "os.write(fd, open('/bin/true', 'rb').read())\n"
        "if os.fork() == 0:\n"
        "    os.execve(fd, ['innocent'], {})\n"
        "os.wait()\n"
    )
    subprocess.run(
        ["strace", *STRACE_ARGS, "-o", str(out), "--", "unshare", "--user", "--pid", "--fork",
         "python3", "-I", "-c", script],
        check=True,
        cwd=tmp_path,
    )  # fmt: skip
    execs = [e for e in _events(out.read_text()) if isinstance(e, ProcessExec)]
    python = next(e for e in execs if e.argv[:2] == ("python3", "-I"))
    [run] = [e for e in execs if e.argv == ("innocent",)]
    assert (run.path, run.fileless, run.ppid) == ("/memfd:img (deleted)", True, python.pid)


def test_a_held_exec_keeps_every_field_when_its_parent_becomes_known() -> None:
    # The parser builds the released event field by field (no dataclasses.replace, for speed):
    # a held exec with every field set must come out as replace() would give it.
    parser = ExecTraceParser(root_ppid=None, root_cwd="/w")
    parser.feed('10 1.0 execve("/bin/sh", ["sh"], 0x1 /* 1 var */) = 0\n')
    held = parser.feed(
        '11 1.1 execveat(3</memfd:x (deleted)>, "", ["x", "a"...], 0x1 /* 1 var */, '
        "AT_EMPTY_PATH) = 0\n"
    )
    assert held == []
    (got,) = parser.feed("10 1.2 vfork() = 11\n")
    assert isinstance(got, ProcessExec)
    unreleased = ProcessExec(
        11, None, got.path, got.argv, None, 1.1, True, (1,), True, "3</memfd:x (deleted)>"
    )
    assert got == dataclasses.replace(unreleased, ppid=10, cwd="/w")
    assert {f.name for f in dataclasses.fields(ProcessExec)} == {
        "pid",
        "ppid",
        "path",
        "argv",
        "cwd",
        "ts",
        "truncated",
        "cut",
        "fileless",
        "exec_fd",
    }  # a new field must be passed on in ExecTraceParser._complete too
