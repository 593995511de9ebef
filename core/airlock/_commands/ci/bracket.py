"""Bracket sessions: ``airlock ci session start`` … (steps, `uses:` actions) … ``stop``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airlock._commands.ci.finalize import finalize, resolve_platform, say, warn
from airlock.errors import AirlockError, ExitCode, UsageError
from airlock.jobs.follow import is_gateway_variable

if TYPE_CHECKING:  # the recorder's modules load in start only: `stop` starts faster
    from airlock.jobs.launch import RunOptions

__all__ = [
    "pid_alive",
    "run_options",
    "session_command",
    "session_start",
    "session_stop",
    "wait_for",
]

_HOOK_SCRIPT_MAX = 65536

_HOOK = """\
# Airlock bracket session: record each bash process that later steps start (BASH_ENV).
if [ -n "${AIRLOCK_JOURNAL:-}" ] && [ -w "$AIRLOCK_JOURNAL" ]; then
  {
    printf 'bash pid=%s ppid=%s cwd=%s script=%s\\n' "$$" "$PPID" "$PWD" "$0"
    # a step's own shell (parent not bash): its script's hash, and its text when asked for
    __airlock_parent="$(cat "/proc/$PPID/comm" 2>/dev/null || true)"
    if [ "$__airlock_parent" = bash ] || [ "$__airlock_parent" = sh ]; then
      :
    elif [ -f "$0" ]; then
      printf 'script sha256=%s bytes=%s\\n' "$(sha256sum "$0" 2>/dev/null | cut -d' ' -f1)" \\
        "$(wc -c < "$0" 2>/dev/null)"
      if [ RECORD_TEXT = 1 ]; then head -c HOOK_MAX "$0" 2>/dev/null | sed 's/^/  | /'; echo; fi
    elif [ -n "${BASH_EXECUTION_STRING:-}" ] && [ RECORD_TEXT = 1 ]; then
      printf '%s\\n' "$BASH_EXECUTION_STRING" | head -c HOOK_MAX | sed 's/^/  | /'
    fi
  } >> "$AIRLOCK_JOURNAL" 2>/dev/null || true
  unset __airlock_parent
fi
if [ -n "${AIRLOCK_PREVIOUS_BASH_ENV:-}" ] && [ -f "$AIRLOCK_PREVIOUS_BASH_ENV" ]; then
  . "$AIRLOCK_PREVIOUS_BASH_ENV"
fi
"""


def _hook_text(record_scripts: bool) -> str:
    """The BASH_ENV hook. Script text only on request: GitHub pastes `${{ secrets.X }}` into a
    step's script file, and Airlock's masker knows only the secrets the policy names."""
    text = _HOOK.replace("HOOK_MAX", str(_HOOK_SCRIPT_MAX))
    return text.replace("RECORD_TEXT", "1" if record_scripts else "0")


# Inputs given at start that stop uses when its own step leaves them empty.
_CARRIED_TO_STOP = ("archive_to", "endpoint_url", "retention_days", "revoke")


@dataclass(frozen=True)
class _Bracket:
    state: Path

    @property
    def file(self) -> Path:
        return self.state / "bracket.json"

    @property
    def journal(self) -> Path:
        return self.state / "journal.log"

    @property
    def stop_file(self) -> Path:
        return self.state / "stop"

    @property
    def hook(self) -> Path:
        return self.state / "bash-hook.sh"

    @property
    def ready_file(self) -> Path:
        return self.state / "ready.json"

    @property
    def request_file(self) -> Path:
        return self.state / "recorder.json"

    def load(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.file.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"no bracket session was started ({self.file} unreadable)",
                hint="run `airlock ci session start` (actions/session) first",
            ) from exc
        return data

    def save(self, data: Mapping[str, Any]) -> None:
        self.file.write_text(json.dumps(dict(data)))


def _bracket(args: argparse.Namespace, environ: Mapping[str, str]) -> _Bracket:
    if args.state is not None:
        return _Bracket(Path(args.state).resolve())
    base = Path(environ.get("RUNNER_TEMP") or environ.get("CI_BUILDS_DIR") or "/tmp")  # noqa: S108
    return _Bracket((base / "airlock" / "bracket").resolve())


def run_options(
    environ: Mapping[str, str],
    sessions: Path,
    *,
    policy: str | Path | None = None,
    policy_sha256: str | None = None,
    key: Path | None = None,
    pty: str | None = None,
    sandbox: str | None = None,
    broker: str | None = None,
    audience: str | None = None,
) -> RunOptions:
    """``airlock run``'s options for a session this edge starts: what it was given, else the
    ``AIRLOCK_*`` variable ``airlock run`` itself would read."""
    from airlock.jobs.launch import RunOptions
    from airlock.policy.pin import split_policy_value

    def env(name: str) -> str | None:
        return environ.get(name) or None

    def env_path(name: str) -> Path | None:
        value = env(name)
        return Path(value) if value else None

    policy_path, policy_text = split_policy_value(policy or env("AIRLOCK_POLICY"))
    return RunOptions(
        sessions=sessions,
        policy=policy_path,
        policy_text=policy_text,
        policy_sha256=policy_sha256 or env("AIRLOCK_POLICY_SHA256"),
        key=key or env_path("AIRLOCK_KEY"),
        pty=pty or env("AIRLOCK_PTY"),
        strace=env("AIRLOCK_STRACE"),
        sandbox=sandbox or env("AIRLOCK_SANDBOX"),
        broker=broker or env("AIRLOCK_BROKER_URL"),
        audience=audience or env("AIRLOCK_AUDIENCE"),
        state_dir=env_path("AIRLOCK_STATE_DIR"),
    )


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def session_start(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    bracket = _bracket(args, environ)
    if bracket.file.exists() and not bracket.load().get("stopped"):
        raise UsageError("a bracket session is already open in this job", hint="stop it first")
    bracket.state.mkdir(parents=True, exist_ok=True)
    sessions = args.sessions or bracket.state / "sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    bracket.stop_file.unlink(missing_ok=True)
    bracket.ready_file.unlink(missing_ok=True)
    bracket.journal.touch(mode=0o600)
    bracket.hook.write_text(_hook_text(bool(getattr(args, "record_scripts", False))))
    from airlock.jobs.recorder import RecorderRequest, recorder_argv, write_request

    options = run_options(
        environ,
        sessions,
        policy=args.policy,
        policy_sha256=getattr(args, "policy_sha256", None),
        key=getattr(args, "key", None),
        pty="never",
        broker=getattr(args, "broker", None),
        audience=getattr(args, "audience", None),
    )
    request = RecorderRequest(bracket.journal, bracket.stop_file, bracket.ready_file, options)
    write_request(bracket.request_file, request)
    log = bracket.state / "recorder.log"
    with log.open("ab") as log_file:
        proc = subprocess.Popen(
            recorder_argv(bracket.request_file),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    # ready: `airlock run` started its gateways and its command; or it exited (fail closed)
    wait_for(lambda: bracket.ready_file.exists() or proc.poll() is not None, 30.0)
    if not bracket.ready_file.exists():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise _unavailable(f"the bracket recorder did not start: {_tail(log)}")
    gateway_env = _gateway_variables(bracket.ready_file, environ)
    from airlock.audit.reader import find_logs  # here: `stop` starts faster

    session = max(find_logs(sessions, archived=False), key=lambda p: p.stat().st_mtime).parent
    bracket.save(
        {
            "pid": proc.pid,
            "sessions": str(sessions),
            "session": str(session),
            # what stop must do even when its own step does not repeat the inputs
            "finalize": {name: getattr(args, name, None) for name in _CARRIED_TO_STOP},
        }
    )
    _export_bracket(bracket, session, environ, gateway_env)
    say(f"bracket session {session.name} started; later steps are recorded until stop")
    return 0


def _tail(log: Path, lines: int = 5) -> str:
    """The recorder's last lines (Airlock's own messages: they name things, never secrets)."""
    try:
        text = log.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return f"see {log}"
    return " / ".join(line.strip() for line in text) or f"see {log}"


# Gateway variables that carry the session-bound ticket: masked before they are exported.
_TICKET_NAMES = ("DATABASE_URL", "PGPASSWORD")
_TICKET_SUFFIXES = ("_DATABASE_URL", "_TOKEN")


def _gateway_variables(ready: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The gateway variables the recorder's command got that this step does not already have."""
    seen: dict[str, str] = json.loads(ready.read_text())
    ready.unlink()
    return {k: v for k, v in seen.items() if environ.get(k) != v}


def _unavailable(message: str) -> AirlockError:
    from airlock.errors import InfrastructureUnavailable

    return InfrastructureUnavailable(message)


def _export_bracket(
    bracket: _Bracket, session: Path, environ: Mapping[str, str], gateway_env: Mapping[str, str]
) -> None:
    from airlock.ci.github import GitHubFiles, set_env

    files = GitHubFiles(environ)
    files.set_outputs({"session-id": session.name, "session-path": str(session)})
    if files.env is None:
        return
    for name, value in gateway_env.items():
        if name in _TICKET_NAMES or name.endswith(_TICKET_SUFFIXES):
            for line in files.export_secret(name, value):
                print(line, flush=True)
        else:
            set_env(files.env, name, value)
    set_env(files.env, "AIRLOCK_GATEWAY_VARIABLES", ",".join(sorted(gateway_env)))
    set_env(files.env, "AIRLOCK_JOURNAL", str(bracket.journal))
    set_env(files.env, "AIRLOCK_PREVIOUS_BASH_ENV", environ.get("BASH_ENV", ""))
    set_env(files.env, "BASH_ENV", str(bracket.hook), allow_exec_hijack=True)


def session_stop(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    bracket = _bracket(args, environ)
    data = bracket.load()
    if data.get("stopped"):
        say("the bracket session was already stopped")
        return 0
    alive = pid_alive(int(data["pid"]))
    bracket.stop_file.touch()
    if not wait_for(lambda: not pid_alive(int(data["pid"])), 20.0):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(data["pid"]), signal.SIGTERM)
        wait_for(lambda: not pid_alive(int(data["pid"])), 10.0)
    bracket.save({**data, "stopped": True})
    _unexport_bracket(environ)
    args.sessions = Path(data["sessions"])
    for name, value in (data.get("finalize") or {}).items():
        if name in _CARRIED_TO_STOP and not getattr(args, name, None):
            setattr(args, name, value)
    result = finalize(args, environ)
    if not alive:
        result.fail(
            int(ExitCode.VERIFY_FAILED),
            "the bracket recorder was not running at stop: something ended it (tampering?)",
        )
        warn(resolve_platform(args.platform, environ), result.problems[-1][1])
    return result.exit_code(args.fail_mode)


def pid_alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        waited = 0  # not our child (stop runs in another step): ask the kernel instead
    if waited == pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _unexport_bracket(environ: Mapping[str, str]) -> None:
    from airlock.ci.github import GitHubFiles, set_env

    files = GitHubFiles(environ)
    if files.env is not None:
        previous = environ.get("AIRLOCK_PREVIOUS_BASH_ENV", "")
        set_env(files.env, "BASH_ENV", previous, allow_exec_hijack=True)
        set_env(files.env, "AIRLOCK_JOURNAL", "")
        # the gateways stopped with the recorder: their addresses and tickets are dead
        for name in filter(None, environ.get("AIRLOCK_GATEWAY_VARIABLES", "").split(",")):
            if is_gateway_variable(name):
                set_env(files.env, name, "")


def session_command(args: argparse.Namespace) -> int:
    if args.phase == "start":
        return session_start(args, os.environ)
    return session_stop(args, os.environ)
