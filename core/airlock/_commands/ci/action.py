"""The root GitHub Action's steps: ``airlock ci action main|post|session-main|session-post``."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from airlock._commands.ci.bracket import (
    pid_alive,
    run_options,
    session_start,
    session_stop,
    wait_for,
)
from airlock._commands.ci.finalize import FAIL_MODES, finalize, say
from airlock._commands.ci.inputs import check_values
from airlock.ci.sandbox_host import prepare_sandbox_host
from airlock.errors import AirlockError, UsageError

__all__ = [
    "action_command",
    "action_inputs",
    "parse_env_blocks",
]


def action_inputs(environ: Mapping[str, str]) -> dict[str, str]:
    """The action's inputs: ``INPUT_<NAME>`` variables (name upper-cased, hyphens kept), trimmed."""
    inputs = {
        key[len("INPUT_") :].lower(): value.strip()
        for key, value in environ.items()
        if key.startswith("INPUT_")
    }
    policy = environ.get("INPUT_POLICY", "")
    if "\n" in policy:  # inline YAML: its newlines say so (airlock.policy.pin)
        inputs["policy"] = policy
    return inputs


def _grants(raw: str) -> list[str]:
    return [g for g in raw.replace(",", "\n").split() if g]


def _save_state(environ: Mapping[str, str], values: Mapping[str, str]) -> None:
    from airlock.ci.github import set_output

    state = environ.get("GITHUB_STATE")
    if not state:
        raise UsageError("GITHUB_STATE is not set", hint="`airlock ci action` runs in a job step")
    for name, value in values.items():
        set_output(Path(state), name, value)


def _job_dir(environ: Mapping[str, str]) -> Path:
    base = Path(environ.get("RUNNER_TEMP") or "/tmp")  # noqa: S108 (outside Actions only)
    return base / "airlock" / uuid.uuid4().hex[:12]


def _fail_mode(value: str) -> str:
    if value not in FAIL_MODES:
        raise UsageError(f"fail-mode must be one of {', '.join(FAIL_MODES)}, not {value!r}")
    return value


def declared_inputs(environ: Mapping[str, str]) -> set[str] | None:
    """The inputs the running action declares: its action.yml, named by the shim."""
    import yaml

    path = Path(environ.get("AIRLOCK_ACTION_YML") or "/nonexistent/action.yml")
    try:
        declared = yaml.safe_load(path.read_text()).get("inputs") or {}
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return None
    return {str(name).lower() for name in declared}


def check_inputs(inputs: Mapping[str, str], declared: set[str] | None = None) -> None:
    """Refuse bad inputs before anything starts: UsageError (exit 80) naming the input."""
    unknown = sorted(set(inputs) - declared) if declared is not None else []
    if unknown:
        raise UsageError(
            f"unknown input(s) {', '.join(unknown)} for this action",
            hint=f"the inputs are: {', '.join(sorted(declared or ()))}",
        )
    check_values(inputs, os.environ)


def _finalize_args(inputs: Mapping[str, str], sessions: Path | None) -> argparse.Namespace:
    days = inputs.get("retention-days")
    if days and not days.isdigit():
        raise UsageError(f"retention-days must be a whole number of days, not {days!r}")
    return argparse.Namespace(
        sessions=sessions,
        archive_to=inputs.get("archive-to") or None,
        endpoint_url=inputs.get("s3-endpoint-url") or None,
        retention_days=int(days) if days else None,
        revoke=bool(inputs.get("broker-url")),
        platform="github",
        artifacts=None,
        fail_mode=_fail_mode(inputs.get("fail-mode") or "closed"),
        key=None,
        policy=_policy_input(inputs.get("policy", "")),
        policy_sha256=inputs.get("policy-sha256") or None,
        state=None,
    )


def _policy_input(value: str) -> str | Path | None:
    """The policy input: inline YAML as is; a path resolved now (the main step may change to
    working-directory before the run)."""
    from airlock.policy.pin import split_policy_value

    path, text = split_policy_value(value)
    return text if text is not None else (path.resolve() if path is not None else None)


def _exchange(inputs: Mapping[str, str], environ: Mapping[str, str]) -> int:
    if not inputs.get("broker-url"):
        return 0
    try:
        _issue(inputs, environ)
    except AirlockError as exc:
        print(f"airlock: error: {exc.explain()}", file=sys.stderr)
        say(f"credentials exchange failed (exit {int(exc.exit_code)}); nothing was started")
        return int(exc.exit_code)
    return 0


def _issue(inputs: Mapping[str, str], environ: Mapping[str, str]) -> None:
    """``airlock credentials --export github`` with the action's inputs, then the ``AIRLOCK_*``
    variables that command would read."""
    from airlock._commands.credentials import export_github, say_issued
    from airlock.brokerclient import default_state_dir
    from airlock.jobs.credentials import issue_credentials

    def env_list(name: str) -> list[str]:
        return [v for v in environ.get(name, "").split(",") if v]

    audience = inputs.get("audience") or environ.get("AIRLOCK_AUDIENCE")
    if not audience:
        raise UsageError("broker-url needs an audience", hint="set `with: audience: ...`")
    state_dir = environ.get("AIRLOCK_STATE_DIR")
    state = issue_credentials(
        inputs["broker-url"],
        audience,
        [*env_list("AIRLOCK_GRANTS"), *_grants(inputs.get("grants", ""))],
        state_dir=Path(state_dir) if state_dir else default_state_dir(),
        gateways=env_list("AIRLOCK_GATEWAYS"),
        id_token_variable=environ.get("AIRLOCK_ID_TOKEN_VARIABLE") or "AIRLOCK_ID_TOKEN",
    )
    hold = environ.get("AIRLOCK_HOLD", "").strip().lower() in {"1", "true", "yes", "on"}
    if not hold:
        export_github(state.values())
    say_issued(state.leases, state.rule_id)


def _exchange_into_this_step(inputs: Mapping[str, str], environ: Mapping[str, str]) -> int:
    """Exchange, then also load what was exported into this process for ``airlock run``.

    ``--export github`` writes GITHUB_ENV, which only later steps read; the root action runs
    the agent in this very step, so the blocks appended during the exchange are read back.
    """
    env_file = Path(environ["GITHUB_ENV"]) if environ.get("GITHUB_ENV") else None
    before = env_file.stat().st_size if env_file is not None and env_file.exists() else 0
    code = _exchange(inputs, environ)
    if code == 0 and env_file is not None and env_file.exists():
        with env_file.open("rb") as handle:
            handle.seek(before)
            os.environ.update(parse_env_blocks(handle.read().decode("utf-8")))
    return code


def parse_env_blocks(text: str) -> dict[str, str]:
    """``NAME<<DELIMITER`` blocks and ``NAME=value`` lines, as the runner reads GITHUB_ENV."""
    values: dict[str, str] = {}
    lines = iter(text.split("\n"))
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            body = []
            for inner in lines:
                if inner == delimiter:
                    break
                body.append(inner)
            values[name] = "\n".join(body)
        elif "=" in line:
            name, value = line.split("=", 1)
            values[name] = value
    return values


def _action_main(environ: Mapping[str, str]) -> int:
    inputs = action_inputs(environ)
    command = inputs.get("command", "")
    if not command:
        raise UsageError("the action needs a command", hint="set `with: command: ...`")
    check_inputs(inputs, declared_inputs(environ))
    args = _finalize_args(inputs, _job_dir(environ) / "sessions")
    args.sessions.mkdir(parents=True)
    _save_state(environ, {"sessions": str(args.sessions), "started": "1", "pid": str(os.getpid())})
    code = _exchange_into_this_step(inputs, environ)
    if code != 0:
        return code
    sandbox = inputs.get("sandbox") or "required"
    prepare_sandbox_host(sandbox, say=say)
    broker = inputs.get("broker-url") or None  # witnesses checkpoints of the log as it runs
    options = run_options(
        environ,
        args.sessions,
        policy=args.policy,
        policy_sha256=args.policy_sha256,
        sandbox=sandbox,
        broker=broker,
        audience=(inputs.get("audience") or None) if broker else None,
    )
    if inputs.get("working-directory"):
        os.chdir(inputs["working-directory"])
    from airlock.jobs.launch import run_and_report

    status = run_and_report(["bash", "-e", "-o", "pipefail", "-c", command], options, os.environ)
    if status != 0:
        _annotate_failure(status)
    finalized = finalize(args, environ).exit_code(args.fail_mode)
    _save_state(environ, {"finalized": "1"})
    return status or finalized


def _annotate_failure(status: int) -> None:
    from airlock.ci.github import error_annotation
    from airlock.errors import ExitCode

    codes = {int(c) for c in ExitCode}
    if status in codes:
        text = f"Airlock itself failed (exit {status}: {ExitCode(status).meaning}); see the log"
    elif status > 128:
        text = f"the agent command was killed by signal {status - 128} (exit {status})"
    else:
        text = f"the agent command failed with exit status {status}"
    print(error_annotation(text + "; the session is sealed and in the job summary"), flush=True)


def _action_post(environ: Mapping[str, str]) -> int:
    """After a cancelled or crashed main step: the duties main could not do."""
    if environ.get("STATE_started") != "1" or environ.get("STATE_finalized") == "1":
        return 0
    say("the main step did not finish: sealing, revoking and archiving now")
    _stop_leftover_main(environ.get("STATE_pid", ""))
    args = _finalize_args(action_inputs(environ), Path(environ["STATE_sessions"]))
    args.note = "cancelled: the main step did not finish (the job was cancelled or timed out)"
    return finalize(args, environ).exit_code(args.fail_mode)


def _stop_leftover_main(pid_text: str, grace: float = 5.0) -> None:
    """Stop a main step process that outlived its step (its shim was killed, not signalled).

    It still holds its session's lock; SIGTERM makes ``airlock run`` stop the command and seal.
    Only a process whose command line is the main step's own is signalled (pids are reused).
    """
    if not pid_text.isdigit() or not _is_main_step(int(pid_text)):
        return
    pid = int(pid_text)
    say(f"the main step's process {pid} is still running: stopping it so that it seals")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not wait_for(lambda: not pid_alive(pid), grace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(pid), 5.0)


def _is_main_step(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"airlock._commands.ci" in argv and argv[-3:-1] == [b"action", b"main"]


def _session_main(environ: Mapping[str, str]) -> int:
    inputs = action_inputs(environ)
    phase = inputs.get("phase") or "start"
    if phase not in ("start", "stop"):
        raise UsageError(
            f"input phase must be start or stop, not {phase!r}", hint="set `with: phase: start`"
        )
    args = _finalize_args(inputs, None)
    if phase == "stop":  # stop always stops what start began: its inputs were checked then
        return session_stop(args, environ)
    check_inputs(inputs, declared_inputs(environ))
    code = _exchange(inputs, environ)
    if code != 0:
        return code
    _save_state(environ, {"started": "1"})
    # the recorder streams checkpoints of its log to the broker as it runs
    args.broker = inputs.get("broker-url") or None
    args.audience = (inputs.get("audience") or None) if args.broker else None
    args.record_scripts = inputs.get("record-scripts", "false").lower() == "true"
    return session_start(args, environ)


def _session_post(environ: Mapping[str, str]) -> int:
    if environ.get("STATE_started") != "1":
        return 0
    args = _finalize_args(action_inputs(environ), None)
    return session_stop(args, environ)


_ACTION_PHASES: dict[str, Callable[[Mapping[str, str]], int]] = {
    "main": _action_main,
    "post": _action_post,
    "session-main": _session_main,
    "session-post": _session_post,
}


def action_command(args: argparse.Namespace) -> int:
    return _ACTION_PHASES[args.phase](os.environ)
