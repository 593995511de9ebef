"""The sandbox's parts against a real bubblewrap: the seccomp filter refuses each call it must,
bad input is refused before anything starts (exit 80), `required` fails closed (exit 85), and
`best_effort` records the downgrade."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from airlock.errors import ConfigError
from airlock.policy import SandboxPolicy, parse_policy
from airlock.policy.load import PolicyError
from airlock.sandbox import compile_spec, protected_paths, start_sandbox
from airlock.sandbox.seccomp import ARCHES, build_filter

AIRLOCK = str(Path(sys.executable).parent / "airlock")
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap missing")

SYSCALLS = r"""
import ctypes, errno, fcntl, json, os, termios
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    rc = libc.syscall(nr, *args)
    return errno.errorcode.get(ctypes.get_errno(), "?") if rc < 0 else "ok"
out = {
    "ptrace": call(101, 16, 1, 0, 0),
    "unshare_user": call(272, 0x10000000),
    "setns": call(308, 0, 0),
    "mount": call(165, 0, 0, 0, 0, 0),
    "keyctl": call(250, 0, 0),
    "bpf": call(321, 0, 0, 0),
    "perf_event_open": call(298, 0, 0, -1, -1, 0),
    "process_vm_readv": call(310, 1, 0, 0, 0, 0, 0),
    "clone3": call(435, 0, 0),
    "clone_newnet": call(56, 0x40000000 | 17, 0, 0, 0, 0),
}
master, slave = os.openpty()
try:
    fcntl.ioctl(slave, termios.TIOCSTI, b"x"); out["tiocsti"] = "ok"
except OSError as exc:
    out["tiocsti"] = errno.errorcode[exc.errno]
pid = os.fork()
if pid == 0:
    os._exit(7)
out["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(out))
"""


def _spec(tmp_path: Path, mode: str = "required", policy: SandboxPolicy | None = None):  # type: ignore[no-untyped-def]
    home = str(tmp_path / "home")
    protected = protected_paths(
        sessions_dir=tmp_path / "ws" / ".airlock" / "sessions",
        key_path=None,
        state_dir=None,
        home=home,
    )
    (tmp_path / "ws").mkdir(exist_ok=True)
    return compile_spec(
        policy or SandboxPolicy(), mode=mode, workspace=str(tmp_path / "ws"), home=home,
        protected=protected, environ={},
    )  # fmt: skip


def test_the_filter_checks_the_architecture_first() -> None:
    for arch in ARCHES.values():
        program = build_filter(arch)
        assert len(program) % 8 == 0
        # instruction 0 loads seccomp_data.arch, instruction 1 compares it with ours
        assert program[:8] == bytes.fromhex("2000000004000000")
        assert int.from_bytes(program[12:16], "little") == arch.audit_arch


@needs_bwrap
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers below are x86_64")
def test_seccomp_refuses_each_call_inside_a_real_sandbox(tmp_path: Path) -> None:
    sandbox = start_sandbox(_spec(tmp_path), endpoints=[], agent_env={"PATH": "/usr/bin:/bin"})
    statuses: list[dict[str, object]] = []
    try:
        argv = sandbox.wrap(["/usr/bin/python3", "-I", "-S", "-c", SYSCALLS])
        proc = subprocess.Popen(
            argv, env=sandbox.env, pass_fds=sandbox.pass_fds, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        sandbox.started()
        assert sandbox.check(statuses.append), sandbox.status  # the probes ran in this sandbox
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        sandbox.close()
    assert proc.returncode == 0, stderr
    assert [p["id"] for p in statuses[0]["probes"] if not p["ok"]] == []
    result = json.loads(stdout)
    assert result.pop("fork") == 7  # plain fork/clone still works
    assert result.pop("clone3") == "ENOSYS"
    assert result == dict.fromkeys(result, "EPERM")


def test_bad_sandbox_paths_are_refused_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"read_write: '.*\.airlock' would expose"):
        _spec(tmp_path, policy=SandboxPolicy.model_validate(
            {"filesystem": {"read_write": [str(tmp_path / "ws" / ".airlock")]}}
        ))  # fmt: skip
    with pytest.raises(ConfigError, match=r"read_only: .* would expose"):
        _spec(tmp_path, policy=SandboxPolicy.model_validate(
            {"filesystem": {"read_only": [str(tmp_path / "ws" / ".airlock" / "sessions" / "x")]}}
        ))  # fmt: skip
    with pytest.raises(ConfigError, match="'/' would make the whole machine writable"):
        _spec(tmp_path, policy=SandboxPolicy.model_validate({"filesystem": {"read_write": ["/"]}}))
    for bad in ("relative/path", "/a/../etc", "~root/x"):
        with pytest.raises(PolicyError, match=r"sandbox\.filesystem\.hidden"):
            parse_policy(f"sandbox: {{filesystem: {{hidden: ['{bad}']}}}}")
    with pytest.raises(PolicyError, match=r"sandbox\.mode"):
        parse_policy("sandbox: {mode: strict}")


def _run(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIRLOCK_")}
    return subprocess.run(
        [AIRLOCK, "run", "--pty", "never", "--sessions", str(tmp_path / "s"), *args],
        cwd=tmp_path, env={**base, **(env or {})}, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


def test_cli_bad_input_exits_80_and_starts_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    done = _run(tmp_path, "--", "touch", str(marker), env={"AIRLOCK_SANDBOX": "strict"})
    assert done.returncode == 80
    assert "unknown sandbox mode 'strict'" in done.stderr
    policy = tmp_path / "airlock.yaml"
    policy.write_text(f"sandbox: {{mode: required, filesystem: {{read_write: [{tmp_path}]}}}}\n")
    done = _run(tmp_path, "--policy", str(policy), "--", "touch", str(marker))
    assert done.returncode == 80
    assert "would expose Airlock's own state" in done.stderr
    assert not marker.exists()


def _path_without_bwrap(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("strace", "true", "touch"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    return {"PATH": str(bin_dir)}


def test_required_without_bwrap_exits_85_with_the_fix(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    env = _path_without_bwrap(tmp_path)
    done = _run(tmp_path, "--sandbox", "required", "--", "/usr/bin/touch", str(marker), env=env)
    assert done.returncode == 85, done.stderr
    assert "bubblewrap (bwrap) is not installed" in done.stderr
    assert "apparmor_restrict_unprivileged_userns" in done.stderr
    assert not marker.exists()
    [session] = list((tmp_path / "s").iterdir())
    events = [json.loads(line) for line in (session / "events.jsonl").read_text().splitlines()]
    status = next(e["data"] for e in events if e["type"] == "sandbox.status")
    assert status["active"] is False and "bwrap" in status["reason"]
    assert json.loads((session / "manifest.json").read_text())["status"] == "incomplete"


def test_best_effort_without_bwrap_records_the_downgrade(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    env = _path_without_bwrap(tmp_path)
    done = _run(tmp_path, "--sandbox", "best_effort", "--", "/usr/bin/touch", str(marker), env=env)
    assert done.returncode == 0, done.stderr
    assert marker.exists()
    [session] = list((tmp_path / "s").iterdir())
    events = [json.loads(line) for line in (session / "events.jsonl").read_text().splitlines()]
    status = next(e["data"] for e in events if e["type"] == "sandbox.status")
    assert status["downgraded"] is True and status["active"] is False


@needs_bwrap
def test_a_failed_probe_inside_the_agents_sandbox_means_the_agent_never_starts(
    tmp_path: Path,
) -> None:
    # /proc/version cannot be hidden (the sandbox's /proc is its own): fs.hidden fails inside.
    policy = tmp_path / "airlock.yaml"
    policy.write_text("sandbox: {mode: required, filesystem: {hidden: [/proc/version]}}\n")
    marker = tmp_path / "started"
    done = _run(tmp_path, "--policy", str(policy), "--", "/usr/bin/touch", str(marker))
    assert done.returncode == 85, done.stderr
    assert "self-check failed: fs.hidden" in done.stderr
    assert not marker.exists()
    [session] = list((tmp_path / "s").iterdir())
    events = [json.loads(line) for line in (session / "events.jsonl").read_text().splitlines()]
    status = next(e["data"] for e in events if e["type"] == "sandbox.status")
    assert [p["id"] for p in status["probes"] if not p["ok"]] == ["fs.hidden"]
    execs = [e["data"]["path"] for e in events if e["type"] == "process.exec"]
    assert "/usr/bin/touch" not in execs and "/usr/bin/bwrap" in execs
    assert json.loads((session / "manifest.json").read_text())["status"] == "incomplete"


@needs_bwrap
def test_best_effort_runs_the_agent_uncontained_after_a_failed_probe(tmp_path: Path) -> None:
    policy = tmp_path / "airlock.yaml"
    policy.write_text("sandbox: {mode: best_effort, filesystem: {hidden: [/proc/version]}}\n")
    marker = tmp_path / "started"
    done = _run(tmp_path, "--policy", str(policy), "--", "/usr/bin/touch", str(marker))
    assert done.returncode == 0, done.stderr
    assert marker.exists()
    [session] = list((tmp_path / "s").iterdir())
    events = [json.loads(line) for line in (session / "events.jsonl").read_text().splitlines()]
    [status] = [e["data"] for e in events if e["type"] == "sandbox.status"]
    assert status["downgraded"] is True and status["active"] is False
    assert "fs.hidden" in status["reason"]


TTY_AGENT = r"""
import errno, fcntl, os, termios
fd = os.open("/dev/tty", os.O_RDWR)
os.write(fd, b"hello from /dev/tty\n")
try:
    fcntl.ioctl(fd, termios.TIOCSTI, b"x")
    print("tiocsti: ok")
except OSError as exc:
    print("tiocsti:", errno.errorcode[exc.errno])
"""


@needs_bwrap
def test_an_agent_with_a_pty_can_open_dev_tty_but_not_inject_into_it(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    done = subprocess.run(
        [AIRLOCK, "run", "--pty", "always", "--sandbox", "required", "--sessions",
         str(tmp_path / "s"), "--", "/usr/bin/python3", "-I", "-S", "-c", TTY_AGENT],
        cwd=tmp_path / "ws", capture_output=True, text=True, timeout=120, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("AIRLOCK_")},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hello from /dev/tty" in done.stdout
    assert "tiocsti: EPERM" in done.stdout


@needs_bwrap
def test_the_agent_inherits_no_pipe_of_the_self_check(tmp_path: Path) -> None:
    """The relay closes the results and go pipes before the agent runs: the agent can neither
    forge the probes' results nor answer for Airlock (nor hold the seccomp memfd)."""
    (tmp_path / "ws").mkdir()
    listing = "import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))"
    for extra in ([], ["--pty", "always"]):
        done = subprocess.run(
            [AIRLOCK, "run", "--sandbox", "required", "--sessions", str(tmp_path / "s"),
             "--pty", "never", *extra, "--", "/usr/bin/python3", "-I", "-S", "-c", listing],
            cwd=tmp_path / "ws", capture_output=True, text=True, timeout=120, check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith("AIRLOCK_")},
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.split()[-4:] == ["[0,", "1,", "2,", "3]"], done.stdout  # 3: listdir's
