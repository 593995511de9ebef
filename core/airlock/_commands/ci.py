"""``airlock ci …``: what the GitHub Actions and GitLab CI integrations call.

    airlock ci finalize --sessions DIR   seal what was left open, revoke leases, archive, verify,
                                         write the job summary and the step outputs / dotenv
    airlock ci outputs --sessions DIR    step outputs (or dotenv) of the newest session only
    airlock ci action PHASE              the JavaScript actions' entry points, reading INPUT_*:
                                         main, post (action.yml), session-main, session-post
                                         (actions/session)
    airlock ci session start|stop        bracket: record the steps between start and stop
    airlock ci follow JOURNAL --stop F   (internal) the recorded process of a bracket session

`python -m airlock._commands.ci ARGS` is the same as `airlock ci ARGS` (the shims use it).

The YAML around these stays thin: inputs arrive as environment variables, the logic is here,
where it is tested. ``finalize`` does every duty it can even when an earlier one fails, then
returns the most serious failure (fail-mode ``closed``) or 0 with warnings (``open``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airlock._commands._common import add_flag
from airlock.errors import AirlockError, ExitCode, UsageError

__all__ = [
    "FinalizeResult",
    "action_inputs",
    "finalize",
    "main",
    "parse_env_blocks",
    "register",
]

FAIL_MODES = ("closed", "open")
PLATFORMS = ("auto", "github", "gitlab", "local")
_FOLLOW_POLL_SECONDS = 0.05
_HOOK_SCRIPT_MAX = 65536


def register(sub: Any) -> None:
    """Add ``airlock ci`` and its subcommands."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "ci",
        help="CI integration: finalize a job's sessions, the GitHub Action's steps, brackets",
        description=(
            "Entry points for the GitHub Actions and GitLab CI integrations "
            "(docs/github-actions.md, docs/gitlab-ci.md)."
        ),
    )
    ci_sub = parser.add_subparsers(dest="ci_command", metavar="SUBCOMMAND", required=True)
    _register_finalize(ci_sub)
    _register_action(ci_sub)
    _register_session(ci_sub)
    _register_outputs(ci_sub)
    _register_follow(ci_sub)


def _finalize_flags(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--sessions", env="AIRLOCK_SESSIONS", type=Path, help="the job's sessions dir")
    add_flag(parser, "--archive-to", env="AIRLOCK_ARCHIVE_TO", help="s3://BUCKET/PREFIX or a dir")
    add_flag(parser, "--endpoint-url", env="AIRLOCK_S3_ENDPOINT_URL", help="S3 endpoint override")
    add_flag(
        parser,
        "--retention-days",
        env="AIRLOCK_ARCHIVE_RETENTION_DAYS",
        type=int,
        help="Object Lock retention in days (default: airlock archive's)",
    )
    add_flag(
        parser,
        "--revoke",
        env="AIRLOCK_REVOKE",
        action="store_true",
        help="revoke the job's credential leases (airlock credentials --revoke)",
    )
    add_flag(
        parser,
        "--platform",
        env="AIRLOCK_CI_PLATFORM",
        choices=PLATFORMS,
        default="auto",
        help="where to write the summary and outputs",
    )
    add_flag(
        parser,
        "--artifacts",
        env="AIRLOCK_ARTIFACTS",
        type=Path,
        help="GitLab: directory for the summary, HTML report and dotenv report",
    )
    add_flag(
        parser,
        "--fail-mode",
        env="AIRLOCK_FAIL_MODE",
        choices=FAIL_MODES,
        default="closed",
        help="closed: any failed duty fails the step; open: warn and exit 0 (said in the summary)",
    )
    add_flag(parser, "--key", env="AIRLOCK_KEY", type=Path, help="Ed25519 signing key (PEM)")


def _register_finalize(ci_sub: Any) -> None:
    parser: argparse.ArgumentParser = ci_sub.add_parser(
        "finalize",
        help="seal, revoke, archive, verify, summarize the job's sessions",
        description=(
            "Seal sessions whose recorder was killed (as incomplete), revoke credential "
            "leases, archive and verify every session, write the job summary and outputs. "
            "Each duty runs even when an earlier one failed."
        ),
    )
    _finalize_flags(parser)
    parser.set_defaults(func=_finalize_command)


def _register_action(ci_sub: Any) -> None:
    parser: argparse.ArgumentParser = ci_sub.add_parser(
        "action",
        help="the root GitHub Action's main and post steps (reads INPUT_* variables)",
    )
    parser.add_argument("phase", choices=("main", "post", "session-main", "session-post"))
    parser.set_defaults(func=_action_command)


def _register_session(ci_sub: Any) -> None:
    parser: argparse.ArgumentParser = ci_sub.add_parser(
        "session",
        help="start or stop a bracket session that records the steps in between",
    )
    parser.add_argument("phase", choices=("start", "stop"))
    add_flag(
        parser,
        "--state",
        env="AIRLOCK_BRACKET_STATE",
        type=Path,
        help="state directory (default: $RUNNER_TEMP/airlock/bracket)",
    )
    add_flag(parser, "--policy", env="AIRLOCK_POLICY", type=Path, help="session policy")
    add_flag(
        parser,
        "--record-scripts",
        env="AIRLOCK_BRACKET_RECORD_SCRIPTS",
        action="store_true",
        help="record the text of each step's script, not only its hash (see docs first)",
    )
    _finalize_flags(parser)
    parser.set_defaults(func=_session_command)


def _register_outputs(ci_sub: Any) -> None:
    parser: argparse.ArgumentParser = ci_sub.add_parser(
        "outputs",
        help="write the newest session's id, path, status and exit code as step outputs",
        description="Step outputs (GitHub) or a dotenv report (GitLab) for the newest session.",
    )
    add_flag(parser, "--sessions", env="AIRLOCK_SESSIONS", type=Path, help="sessions dir")
    add_flag(parser, "--platform", env="AIRLOCK_CI_PLATFORM", choices=PLATFORMS, default="auto")
    add_flag(parser, "--artifacts", env="AIRLOCK_ARTIFACTS", type=Path, help="GitLab: dotenv dir")
    parser.set_defaults(func=_outputs_command)


def _register_follow(ci_sub: Any) -> None:
    parser: argparse.ArgumentParser = ci_sub.add_parser(
        "follow", help="(internal) print lines appended to JOURNAL until --stop FILE exists"
    )
    parser.add_argument("journal", type=Path)
    parser.add_argument("--stop", type=Path, required=True)
    parser.add_argument(
        "--ready", type=Path, help="write the gateway variables the recorder gave us here (JSON)"
    )
    parser.set_defaults(func=_follow_command)


# ---------------------------------------------------------------------------------------------
# finalize


@dataclass
class FinalizeResult:
    """What ``finalize`` did: per-duty problems (exit code, message) and the last session."""

    problems: list[tuple[int, str]] = field(default_factory=list)
    sessions: list[Path] = field(default_factory=list)
    sealed_late: list[Path] = field(default_factory=list)
    archive_urls: dict[str, str] = field(default_factory=dict)
    verdicts: dict[str, dict[str, str]] = field(default_factory=dict)

    def fail(self, code: int, message: str) -> None:
        """Record a duty that failed."""
        self.problems.append((code, message))

    def exit_code(self, fail_mode: str) -> int:
        """The most serious problem's code under fail-mode closed; 0 under open."""
        if not self.problems or fail_mode == "open":
            return 0
        return max(code for code, _ in self.problems)


def _cli(argv: Sequence[str]) -> int:
    from airlock._cli import main

    return main(list(argv))


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, Any]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _cli_has(command: str) -> bool:
    from airlock._cli import build_parser

    return command in _subcommands(build_parser())


def _platform(choice: str, environ: Mapping[str, str]) -> str:
    from airlock.ci import detect_platform

    return detect_platform(environ) if choice == "auto" else choice


def _seal_open_sessions(sessions: Path, key_path: Path | None, result: FinalizeResult) -> None:
    from airlock.audit import load_signing_key
    from airlock.capture.session import seal_abandoned_sessions

    try:
        result.sealed_late = seal_abandoned_sessions(sessions, load_signing_key(key_path))
    except AirlockError as exc:
        result.fail(int(exc.exit_code), f"sealing left-open sessions failed: {exc.message}")
    for path in result.sealed_late:
        _say(f"sealed {path.name} as incomplete: its recorder stopped before the end")


def _sealed_sessions(sessions: Path) -> list[Path]:
    found = [p.parent for p in sessions.glob("*/manifest.json")]
    return sorted(found, key=lambda p: (p / "manifest.json").stat().st_mtime)


def _revoke(result: FinalizeResult) -> None:
    if not _cli_has("credentials"):
        result.fail(int(ExitCode.UNAVAILABLE), "cannot revoke: this airlock has no credentials")
        return
    code = _cli(["credentials", "--revoke"])
    if code != 0:
        result.fail(code, f"revoking the job's credential leases failed (exit {code})")


def _archive(session: Path, args: argparse.Namespace, result: FinalizeResult) -> None:
    receipt = session.parent / f".{session.name}.receipt.json"
    argv = ["archive", str(session), "--to", args.archive_to, "--receipt", str(receipt)]
    if args.endpoint_url:
        argv += ["--endpoint-url", args.endpoint_url]
    if args.retention_days is not None:
        argv += ["--retention-days", str(args.retention_days)]
    code = _cli(argv)
    if code != 0:
        result.fail(code, f"archiving {session.name} failed (exit {code})")
        return
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
        result.archive_urls[session.name] = json.loads(receipt.read_text())[0]["url"]


def _verify(session: Path, result: FinalizeResult) -> None:
    from airlock._commands.report import trusted_keys
    from airlock.archive.report import verification_state

    verdict = verification_state(session, trusted_keys([]))
    result.verdicts[session.name] = verdict
    if verdict["state"] == "failed":
        result.fail(int(ExitCode.VERIFY_FAILED), f"{session.name}: {verdict['text']}")


def finalize(args: argparse.Namespace, environ: Mapping[str, str]) -> FinalizeResult:
    """Every end-of-job duty, each attempted whatever happened to the others."""
    result = FinalizeResult()
    sessions: Path | None = args.sessions
    if sessions is None:
        raise UsageError("finalize needs --sessions", hint="the directory `airlock run` wrote to")
    if sessions.is_dir():
        _seal_open_sessions(sessions, args.key, result)
        result.sessions = _sealed_sessions(sessions)
    if args.revoke:
        _revoke(result)
    for session in result.sessions:
        _verify(session, result)
        if args.archive_to:
            _archive(session, args, result)
    if not result.sessions:
        result.fail(int(ExitCode.UNAVAILABLE), f"no sealed session in {sessions}: nothing recorded")
    _publish(result, args, environ)
    return result


def _outputs(result: FinalizeResult, fail_mode: str) -> dict[str, str]:
    from airlock.archive.layout import read_manifest

    out = {
        "session-count": str(len(result.sessions)),
        "fail-mode": fail_mode,
        "problems": str(len(result.problems)),
    }
    if not result.sessions:
        return out
    last = result.sessions[-1]
    manifest = read_manifest(last, required=False)
    verdict = result.verdicts.get(last.name, {})
    out.update(
        {
            "session-id": last.name,
            "session-path": str(last.resolve()),
            "status": str(manifest.get("status", "")),
            "exit-code": "" if manifest.get("exit_code") is None else str(manifest["exit_code"]),
            "verified": verdict.get("state", ""),
            "archive-url": result.archive_urls.get(last.name, ""),
        }
    )
    return out


def _summary_markdown(result: FinalizeResult, fail_mode: str) -> str:
    from airlock._commands.report import trusted_keys
    from airlock.archive.summary import escape_md, render_summary

    parts = [render_summary(s, trusted_keys([]), max_bytes=200_000) for s in result.sessions]
    for name, url in result.archive_urls.items():
        parts.append(f"Archived `{escape_md(name)}` to `{escape_md(url)}` and verified it.\n")
    if result.problems:
        mode = "open: reported, not failing the job" if fail_mode == "open" else "closed"
        parts.append(f"**Airlock problems** (fail-mode {mode}):\n")
        parts += [f"- {escape_md(message)}" for _, message in result.problems]
    return "\n".join(parts) + "\n"


def _publish(result: FinalizeResult, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    platform = _platform(args.platform, environ)
    outputs = _outputs(result, args.fail_mode)
    try:
        if platform == "github":
            _publish_github(result, args, environ, outputs)
        elif platform == "gitlab":
            _publish_gitlab(result, args, environ, outputs)
    except AirlockError as exc:
        result.fail(int(exc.exit_code), f"writing the job summary or outputs failed: {exc.message}")
    for _, message in result.problems:
        _warn(platform, message)


def _publish_github(
    result: FinalizeResult,
    args: argparse.Namespace,
    environ: Mapping[str, str],
    outputs: Mapping[str, str],
) -> None:
    from airlock.ci.github import GitHubFiles

    files = GitHubFiles(environ)
    files.set_outputs(outputs)
    if files.summary is not None and not files.summarize(_summary_markdown(result, args.fail_mode)):
        _say("the job summary is full; see the HTML report (`airlock report`)")


def _publish_gitlab(
    result: FinalizeResult,
    args: argparse.Namespace,
    environ: Mapping[str, str],
    outputs: Mapping[str, str],
) -> None:
    from airlock.ci.gitlab import write_dotenv

    directory: Path = args.artifacts or Path(environ.get("CI_PROJECT_DIR", ".")) / "airlock"
    directory.mkdir(parents=True, exist_ok=True)
    _collect(result.sessions, directory / "sessions")
    (directory / "summary.md").write_text(_summary_markdown(result, args.fail_mode))
    write_dotenv(directory / "airlock.env", _dotenv(outputs))
    if result.sessions:
        _cli(["report", str(result.sessions[-1]), "-o", str(directory / "report.html")])


def _collect(sessions: list[Path], into: Path) -> None:
    """Copy sealed sessions kept outside the artifacts directory into it (for later jobs)."""
    import shutil

    for session in sessions:
        target = into / session.name
        if session.resolve() != target.resolve() and not target.exists():
            shutil.copytree(session, target)


def _warn(platform: str, message: str) -> None:
    from airlock.ci.github import escape_command_data

    if platform == "github":
        print(f"::warning title=Airlock::{escape_command_data(message)}", flush=True)
    else:
        _say(f"warning: {message}")


def _say(text: str) -> None:
    print(f"airlock: {text}", file=sys.stderr, flush=True)


def _outputs_command(args: argparse.Namespace) -> int:
    from airlock._commands._common import default_sessions_dir

    result = FinalizeResult()
    sessions: Path = args.sessions or default_sessions_dir()
    result.sessions = _sealed_sessions(sessions) if sessions.is_dir() else []
    for session in result.sessions[-1:]:
        _verify(session, result)
    outputs = _outputs(result, "closed")
    platform = _platform(args.platform, os.environ)
    if platform == "github":
        from airlock.ci.github import GitHubFiles

        GitHubFiles(os.environ).set_outputs(outputs)
    elif platform == "gitlab":
        from airlock.ci.gitlab import write_dotenv

        directory: Path = args.artifacts or Path(os.environ.get("CI_PROJECT_DIR", ".")) / "airlock"
        directory.mkdir(parents=True, exist_ok=True)
        write_dotenv(directory / "airlock.env", _dotenv(outputs))
    else:
        print(json.dumps(outputs, indent=2))
    return 0


# Names chosen not to collide with the AIRLOCK_* flag variables: a dotenv report's variables
# override the next job's own `variables:`.
_DOTENV_NAMES = {
    "session-id": "AIRLOCK_SESSION_ID",
    "status": "AIRLOCK_SESSION_STATUS",
    "exit-code": "AIRLOCK_EXIT_CODE",
    "verified": "AIRLOCK_VERIFIED",
    "archive-url": "AIRLOCK_ARCHIVE_URL",
    "session-count": "AIRLOCK_SESSION_COUNT",
    "problems": "AIRLOCK_PROBLEMS",
}


def _dotenv(outputs: Mapping[str, str]) -> dict[str, str]:
    return {_DOTENV_NAMES[k]: v for k, v in outputs.items() if k in _DOTENV_NAMES}


def _finalize_command(args: argparse.Namespace) -> int:
    result = finalize(args, os.environ)
    return result.exit_code(args.fail_mode)


# ---------------------------------------------------------------------------------------------
# the root GitHub Action


def action_inputs(environ: Mapping[str, str]) -> dict[str, str]:
    """The action's inputs: ``INPUT_<NAME>`` variables (name upper-cased, hyphens kept), trimmed."""
    return {
        key[len("INPUT_") :].lower(): value.strip()
        for key, value in environ.items()
        if key.startswith("INPUT_")
    }


def _grants(raw: str) -> list[str]:
    return [g for g in raw.replace(",", "\n").split() if g]


def _credentials_argv(inputs: Mapping[str, str]) -> list[str]:
    argv = ["credentials", "--broker", inputs["broker-url"], "--export", "github"]
    if inputs.get("audience"):
        argv += ["--audience", inputs["audience"]]
    for grant in _grants(inputs.get("grants", "")):
        argv += ["--grant", grant]
    return argv


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
        # resolved now: the main step may change to working-directory before the run
        policy=Path(inputs["policy"]).resolve() if inputs.get("policy") else None,
        state=None,
    )


def _witness_argv(inputs: Mapping[str, str]) -> list[str]:
    """``airlock run`` flags that stream checkpoints of the log to the broker as it runs."""
    if not inputs.get("broker-url"):
        return []
    argv = ["--broker", inputs["broker-url"]]
    return [*argv, "--audience", inputs["audience"]] if inputs.get("audience") else argv


def _exchange(inputs: Mapping[str, str]) -> int:
    if not inputs.get("broker-url"):
        return 0
    code = _cli(_credentials_argv(inputs))
    if code != 0:
        _say(f"credentials exchange failed (exit {code}); nothing was started")
    return code


def _exchange_into_this_step(inputs: Mapping[str, str], environ: Mapping[str, str]) -> int:
    """Exchange, then also load what was exported into this process for ``airlock run``.

    ``--export github`` writes GITHUB_ENV, which only later steps read; the root action runs
    the agent in this very step, so the blocks appended during the exchange are read back.
    """
    env_file = Path(environ["GITHUB_ENV"]) if environ.get("GITHUB_ENV") else None
    before = env_file.stat().st_size if env_file is not None and env_file.exists() else 0
    code = _exchange(inputs)
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
    args = _finalize_args(inputs, _job_dir(environ) / "sessions")
    args.sessions.mkdir(parents=True)
    _save_state(environ, {"sessions": str(args.sessions), "started": "1", "pid": str(os.getpid())})
    code = _exchange_into_this_step(inputs, environ)
    if code != 0:
        return code
    argv = ["run", "--sessions", str(args.sessions), *_witness_argv(inputs)]
    if args.policy:
        argv += ["--policy", str(args.policy)]
    if inputs.get("working-directory"):
        os.chdir(inputs["working-directory"])
    status = _cli([*argv, "--", "bash", "-e", "-o", "pipefail", "-c", command])
    finalized = finalize(args, environ).exit_code(args.fail_mode)
    _save_state(environ, {"finalized": "1"})
    return status or finalized


def _action_post(environ: Mapping[str, str]) -> int:
    """After a cancelled or crashed main step: the duties main could not do."""
    if environ.get("STATE_started") != "1" or environ.get("STATE_finalized") == "1":
        return 0
    _say("the main step did not finish: sealing, revoking and archiving now")
    _stop_leftover_main(environ.get("STATE_pid", ""))
    args = _finalize_args(action_inputs(environ), Path(environ["STATE_sessions"]))
    return finalize(args, environ).exit_code(args.fail_mode)


def _stop_leftover_main(pid_text: str, grace: float = 5.0) -> None:
    """Stop a main step process that outlived its step (its shim was killed, not signalled).

    It still holds its session's lock; SIGTERM makes ``airlock run`` stop the command and seal.
    Only a process whose command line is the main step's own is signalled (pids are reused).
    """
    if not pid_text.isdigit() or not _is_main_step(int(pid_text)):
        return
    pid = int(pid_text)
    _say(f"the main step's process {pid} is still running: stopping it so that it seals")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_for(lambda: not _pid_alive(pid), grace):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_for(lambda: not _pid_alive(pid), 5.0)


def _is_main_step(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"airlock._commands.ci" in argv and argv[-3:-1] == [b"action", b"main"]


def _session_main(environ: Mapping[str, str]) -> int:
    inputs = action_inputs(environ)
    phase = inputs.get("phase") or "start"
    args = _finalize_args(inputs, None)
    if phase == "stop":
        return _session_stop(args, environ)
    if phase != "start":
        raise UsageError(f"phase must be start or stop, not {phase!r}")
    code = _exchange(inputs)
    if code != 0:
        return code
    _save_state(environ, {"started": "1"})
    args.witness = _witness_argv(inputs)
    args.record_scripts = inputs.get("record-scripts", "false").lower() == "true"
    return _session_start(args, environ)


def _session_post(environ: Mapping[str, str]) -> int:
    if environ.get("STATE_started") != "1":
        return 0
    args = _finalize_args(action_inputs(environ), None)
    return _session_stop(args, environ)


_ACTION_PHASES: dict[str, Callable[[Mapping[str, str]], int]] = {
    "main": _action_main,
    "post": _action_post,
    "session-main": _session_main,
    "session-post": _session_post,
}


def _action_command(args: argparse.Namespace) -> int:
    return _ACTION_PHASES[args.phase](os.environ)


# ---------------------------------------------------------------------------------------------
# bracket sessions: start … (steps, `uses:` actions) … stop

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


def _recorder_argv(args: argparse.Namespace, bracket: _Bracket, sessions: Path) -> list[str]:
    argv = [sys.executable, "-m", "airlock._cli", "run", "--sessions", str(sessions)]
    argv += ["--pty", "never", "--quiet", *getattr(args, "witness", [])]
    if args.policy:
        argv += ["--policy", str(args.policy)]
    follow = [sys.executable, "-m", "airlock._commands.ci", "follow", str(bracket.journal)]
    follow += ["--stop", str(bracket.stop_file), "--ready", str(bracket.ready_file)]
    return [*argv, "--", *follow]


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _session_start(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
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
    log = bracket.state / "recorder.log"
    with log.open("ab") as log_file:
        proc = subprocess.Popen(
            _recorder_argv(args, bracket, sessions),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    # ready: `airlock run` started its gateways and its command; or it exited (fail closed)
    _wait_for(lambda: bracket.ready_file.exists() or proc.poll() is not None, 30.0)
    if not bracket.ready_file.exists():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise _unavailable(f"the bracket recorder did not start: {_tail(log)}")
    gateway_env = _gateway_variables(bracket.ready_file, environ)
    session = max(sessions.glob("*/events.jsonl"), key=lambda p: p.stat().st_mtime).parent
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
    _say(f"bracket session {session.name} started; later steps are recorded until stop")
    return 0


def _tail(log: Path, lines: int = 5) -> str:
    """The recorder's last lines (Airlock's own messages: they name things, never secrets)."""
    try:
        text = log.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return f"see {log}"
    return " / ".join(line.strip() for line in text) or f"see {log}"


# What `airlock run` gives the agent to reach the policy's gateways (gateway/runtime.py).
_GATEWAY_NAMES = ("DATABASE_URL", "PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE")
_GATEWAY_SUFFIXES = ("_DATABASE_URL", "_URL", "_TOKEN", "PGSSLMODE")
# Those that carry the session-bound ticket: masked before they are exported.
_TICKET_NAMES = ("DATABASE_URL", "PGPASSWORD")
_TICKET_SUFFIXES = ("_DATABASE_URL", "_TOKEN")


def _is_gateway_variable(name: str) -> bool:
    return name in _GATEWAY_NAMES or name.endswith(_GATEWAY_SUFFIXES)


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


def _session_stop(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    bracket = _bracket(args, environ)
    data = bracket.load()
    if data.get("stopped"):
        _say("the bracket session was already stopped")
        return 0
    alive = _pid_alive(int(data["pid"]))
    bracket.stop_file.touch()
    if not _wait_for(lambda: not _pid_alive(int(data["pid"])), 20.0):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(data["pid"]), signal.SIGTERM)
        _wait_for(lambda: not _pid_alive(int(data["pid"])), 10.0)
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
        _warn(_platform(args.platform, environ), result.problems[-1][1])
    return result.exit_code(args.fail_mode)


def _pid_alive(pid: int) -> bool:
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
            if _is_gateway_variable(name):
                set_env(files.env, name, "")


def _session_command(args: argparse.Namespace) -> int:
    if args.phase == "start":
        return _session_start(args, os.environ)
    return _session_stop(args, os.environ)


def _write_ready(path: Path) -> None:
    """Tell start that the recorder is up, with the gateway variables it gave this process."""
    found = {k: v for k, v in os.environ.items() if _is_gateway_variable(k)}
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(found, handle)
    tmp.rename(path)


def _follow_command(args: argparse.Namespace) -> int:
    """Copy what is appended to the journal to stdout (the recorder masks and logs it)."""
    journal: Path = args.journal
    if args.ready is not None:
        _write_ready(args.ready)
    position = 0
    out = sys.stdout.buffer
    while True:
        stopping = args.stop.exists()
        try:
            size = journal.stat().st_size
        except FileNotFoundError:
            print("airlock: the bracket journal was deleted", flush=True)
            return int(ExitCode.VERIFY_FAILED)
        if size < position:
            print("airlock: the bracket journal was truncated", flush=True)
            return int(ExitCode.VERIFY_FAILED)
        if size > position:
            with journal.open("rb") as handle:
                handle.seek(position)
                chunk = handle.read(size - position)
            position += len(chunk)
            out.write(chunk)
            out.flush()
        if stopping:
            return 0
        time.sleep(_FOLLOW_POLL_SECONDS)


# ---------------------------------------------------------------------------------------------
# `python -m airlock._commands.ci …`: what the action shims call, registered in `airlock` or not


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``airlock ci ARGV`` with the CLI's error handling; returns the exit code."""
    parser = argparse.ArgumentParser(prog="airlock")
    register(parser.add_subparsers(dest="command", required=True))
    args_list = ["ci", *(sys.argv[1:] if argv is None else argv)]
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
        return int(ExitCode.USAGE) if code == 2 else code
    try:
        result: int = args.func(args)
    except AirlockError as exc:
        print(f"airlock: error: {exc.explain()}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
