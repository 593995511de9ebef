"""``airlock ci finalize`` and ``outputs``: seal, revoke, archive, verify, summarize."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airlock.audit._format import MANIFEST_FILE
from airlock.errors import AirlockError, ExitCode, UsageError

__all__ = [
    "FAIL_MODES",
    "PLATFORMS",
    "FinalizeResult",
    "finalize",
    "finalize_command",
    "outputs_command",
    "resolve_platform",
    "run_cli",
    "say",
    "warn",
]

FAIL_MODES = ("closed", "open")
PLATFORMS = ("auto", "github", "gitlab", "local")


@dataclass
class FinalizeResult:
    """What ``finalize`` did: per-duty problems (exit code, message) and the last session."""

    problems: list[tuple[int, str]] = field(default_factory=list)
    sessions: list[Path] = field(default_factory=list)
    sealed_late: list[Path] = field(default_factory=list)
    archive_urls: dict[str, str] = field(default_factory=dict)
    verdicts: dict[str, dict[str, str]] = field(default_factory=dict)
    note: str | None = None  # e.g. "cancelled: …", shown at the top of the summary

    def fail(self, code: int, message: str) -> None:
        """Record a duty that failed."""
        self.problems.append((code, message))

    def exit_code(self, fail_mode: str) -> int:
        """The most serious problem's code under fail-mode closed; 0 under open."""
        if not self.problems or fail_mode == "open":
            return 0
        return max(code for code, _ in self.problems)


def run_cli(argv: Sequence[str]) -> int:
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


def resolve_platform(choice: str, environ: Mapping[str, str]) -> str:
    from airlock.ci import detect_platform

    return detect_platform(environ) if choice == "auto" else choice


def _seal_open_sessions(sessions: Path, key_path: Path | None, result: FinalizeResult) -> None:
    from airlock.audit import load_signing_key
    from airlock.jobs.run import seal_abandoned_sessions

    try:
        result.sealed_late = seal_abandoned_sessions(sessions, load_signing_key(key_path))
    except AirlockError as exc:
        result.fail(int(exc.exit_code), f"sealing left-open sessions failed: {exc.message}")
    for path in result.sealed_late:
        say(f"sealed {path.name} as incomplete: its recorder stopped before the end")


def _sealed_sessions(sessions: Path) -> list[Path]:
    found = [p.parent for p in sessions.glob(f"*/{MANIFEST_FILE}")]
    return sorted(found, key=lambda p: (p / MANIFEST_FILE).stat().st_mtime)


def _revoke(result: FinalizeResult) -> None:
    if not _cli_has("credentials"):
        result.fail(int(ExitCode.UNAVAILABLE), "cannot revoke: this airlock has no credentials")
        return
    code = run_cli(["credentials", "--revoke"])
    if code != 0:
        result.fail(code, f"revoking the job's credential leases failed (exit {code})")


def _archive(session: Path, args: argparse.Namespace, result: FinalizeResult) -> None:
    receipt = session.parent / f".{session.name}.receipt.json"
    argv = ["archive", str(session), "--to", args.archive_to, "--receipt", str(receipt)]
    if args.endpoint_url:
        argv += ["--endpoint-url", args.endpoint_url]
    if args.retention_days is not None:
        argv += ["--retention-days", str(args.retention_days)]
    code = run_cli(argv)
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
    result = FinalizeResult(note=getattr(args, "note", None))
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


def report_link(environ: Mapping[str, str]) -> str | None:
    """Where the job's full HTML report can be found: GitLab's artifact file, GitHub's run page
    (its artifacts section, where a workflow's upload step puts the report)."""
    if environ.get("CI_JOB_URL"):
        return f"{environ['CI_JOB_URL']}/artifacts/file/airlock/report.html"
    names = ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")
    if all(environ.get(n) for n in names):
        server, repo, run = (environ[n] for n in names)
        return f"{server}/{repo}/actions/runs/{run}#artifacts"
    return None


def _summary_markdown(
    result: FinalizeResult, fail_mode: str, environ: Mapping[str, str] | None = None
) -> str:
    from airlock._commands.report import trusted_keys
    from airlock.archive.summary import code_span, escape_md, render_summary

    link = report_link(environ or {})
    parts = [f"> [!WARNING]\n> **{escape_md(result.note)}**\n"] if result.note else []
    parts += [
        render_summary(s, trusted_keys([]), max_bytes=200_000, report_link=link)
        for s in result.sessions
    ]
    for name, url in result.archive_urls.items():
        parts.append(f"Archived {code_span(name)} to {code_span(url)} and verified it.\n")
    if result.problems:
        mode = "open: reported, not failing the job" if fail_mode == "open" else "closed"
        parts.append(f"**Airlock problems** (fail-mode {mode}):\n")
        parts += [f"- {escape_md(message)}" for _, message in result.problems]
    return "\n".join(parts) + "\n"


def _publish(result: FinalizeResult, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
    platform = resolve_platform(args.platform, environ)
    outputs = _outputs(result, args.fail_mode)
    try:
        if platform == "github":
            _publish_github(result, args, environ, outputs)
        elif platform == "gitlab":
            _publish_gitlab(result, args, environ, outputs)
    except AirlockError as exc:
        result.fail(int(exc.exit_code), f"writing the job summary or outputs failed: {exc.message}")
    for _, message in result.problems:
        warn(platform, message)


def _publish_github(
    result: FinalizeResult,
    args: argparse.Namespace,
    environ: Mapping[str, str],
    outputs: Mapping[str, str],
) -> None:
    from airlock.ci.github import GitHubFiles

    files = GitHubFiles(environ)
    report = _github_report(result, args.sessions)
    files.set_outputs({**outputs, "report-path": str(report) if report else ""})
    if files.summary is not None and not files.summarize(
        _summary_markdown(result, args.fail_mode, environ)
    ):
        say("the job summary is full; see the HTML report (`airlock report`)")


def _github_report(result: FinalizeResult, sessions: Path | None) -> Path | None:
    """The newest session's HTML report beside the sessions directory, for an upload step
    (the summary links the run's artifacts); None when there is nothing to report."""
    if not result.sessions or sessions is None:
        return None
    report = sessions.parent / "report.html"
    if run_cli(["report", str(result.sessions[-1]), "-o", str(report)]) != 0:
        result.fail(int(ExitCode.UNAVAILABLE), "writing the HTML report failed")
        return None
    return report.resolve()


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
    (directory / "summary.md").write_text(_summary_markdown(result, args.fail_mode, environ))
    write_dotenv(directory / "airlock.env", _dotenv(outputs))
    if result.sessions:
        run_cli(["report", str(result.sessions[-1]), "-o", str(directory / "report.html")])


def _collect(sessions: list[Path], into: Path) -> None:
    """Copy sealed sessions kept outside the artifacts directory into it (for later jobs)."""
    import shutil

    for session in sessions:
        target = into / session.name
        if session.resolve() != target.resolve() and not target.exists():
            shutil.copytree(session, target)


def warn(platform: str, message: str) -> None:
    from airlock.ci.github import escape_command_data

    if platform == "github":
        print(f"::warning title=Airlock::{escape_command_data(message)}", flush=True)
    else:
        say(f"warning: {message}")


def say(text: str) -> None:
    print(f"airlock: {text}", file=sys.stderr, flush=True)


def outputs_command(args: argparse.Namespace) -> int:
    from airlock._commands._common import default_sessions_dir

    result = FinalizeResult()
    sessions: Path = args.sessions or default_sessions_dir()
    result.sessions = _sealed_sessions(sessions) if sessions.is_dir() else []
    for session in result.sessions[-1:]:
        _verify(session, result)
    outputs = _outputs(result, "closed")
    platform = resolve_platform(args.platform, os.environ)
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


def finalize_command(args: argparse.Namespace) -> int:
    result = finalize(args, os.environ)
    return result.exit_code(args.fail_mode)
