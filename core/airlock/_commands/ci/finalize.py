"""``airlock ci finalize`` and ``outputs``: the job's end (airlock.jobs.finalize does the
sealing, revoking, verifying, archiving), then the CI platform's outputs and summary."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from airlock.errors import AirlockError, ExitCode, UsageError
from airlock.jobs.finalize import (
    ArchivePlan,
    FinalizeResult,
    FinalizeSettings,
    finalize_sessions,
    revoke_job_leases,
    sealed_sessions,
    trusted_keys,
    verify_into,
    write_report,
)

__all__ = [
    "FAIL_MODES",
    "PLATFORMS",
    "FinalizeResult",
    "finalize",
    "finalize_command",
    "outputs_command",
    "resolve_platform",
    "say",
    "warn",
]

FAIL_MODES = ("closed", "open")
PLATFORMS = ("auto", "github", "gitlab", "local")


def resolve_platform(choice: str, environ: Mapping[str, str]) -> str:
    from airlock.ci import detect_platform

    return detect_platform(environ) if choice == "auto" else choice


def _archive_plan(args: argparse.Namespace, environ: Mapping[str, str]) -> ArchivePlan | None:
    """``--archive-to`` with the AIRLOCK_* defaults ``airlock archive`` reads for its flags."""
    if not args.archive_to:
        return None
    spool = environ.get("AIRLOCK_SPOOL")
    try:
        retry_for = float(environ.get("AIRLOCK_ARCHIVE_RETRY_FOR") or 60.0)
    except ValueError as exc:
        raise UsageError("AIRLOCK_ARCHIVE_RETRY_FOR must be a number of seconds") from exc
    days = args.retention_days
    if days is None and environ.get("AIRLOCK_ARCHIVE_RETENTION_DAYS"):
        try:
            days = int(environ["AIRLOCK_ARCHIVE_RETENTION_DAYS"])
        except ValueError as exc:
            raise UsageError("AIRLOCK_ARCHIVE_RETENTION_DAYS must be a number of days") from exc
    return ArchivePlan(
        to=args.archive_to,
        endpoint_url=args.endpoint_url or environ.get("AIRLOCK_S3_ENDPOINT_URL") or None,
        mode=(environ.get("AIRLOCK_ARCHIVE_MODE") or "compliance").lower(),
        retention_days=days,
        allow_unlocked=environ.get("AIRLOCK_ARCHIVE_ALLOW_UNLOCKED", "").lower()
        in ("1", "true", "yes", "on"),
        spool_dir=Path(spool) if spool else None,
        retry_for=retry_for,
    )


def finalize(args: argparse.Namespace, environ: Mapping[str, str]) -> FinalizeResult:
    """Every end-of-job duty, each attempted whatever happened to the others."""
    sessions: Path | None = args.sessions
    if sessions is None:
        raise UsageError("finalize needs --sessions", hint="the directory `airlock run` wrote to")
    settings = FinalizeSettings(
        sessions=sessions,
        key=args.key,
        archive=_archive_plan(args, environ),
        revoke=revoke_job_leases if args.revoke else None,
        note=getattr(args, "note", None),
    )
    result = finalize_sessions(settings, say)
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
    if not write_report(result.sessions[-1], report, result):
        return None
    return report.resolve()


def _publish_gitlab(
    result: FinalizeResult,
    args: argparse.Namespace,
    environ: Mapping[str, str],
    outputs: Mapping[str, str],
) -> None:
    """The artifacts directory is in the checkout, which the agent (and the merge request) may
    have filled first: every name is replaced, never written through (airlock.ci.artifacts).
    The dotenv report goes first, so that no failure after it leaves a planted one behind."""
    from airlock.ci.artifacts import copy_sessions, replace_file
    from airlock.ci.gitlab import write_dotenv

    try:
        directory = _artifacts_dir(args, environ)
        write_dotenv(directory / "airlock.env", _dotenv(outputs))
        copy_sessions(result.sessions, directory / "sessions")
        summary = _summary_markdown(result, args.fail_mode, environ)
        replace_file(directory / "summary.md", summary.encode("utf-8"))
        if result.sessions:
            write_report(result.sessions[-1], directory / "report.html", result)
    except OSError as exc:
        result.fail(int(ExitCode.UNAVAILABLE), f"writing the job's artifacts failed: {exc}")


def _artifacts_dir(args: argparse.Namespace, environ: Mapping[str, str]) -> Path:
    from airlock.ci.artifacts import real_directory

    project = Path(environ.get("CI_PROJECT_DIR", "."))
    return real_directory(args.artifacts or project / "airlock", project)


def warn(platform: str, message: str) -> None:
    from airlock.audit.visible import visible
    from airlock.ci.github import escape_command_data

    if platform == "github":
        print(f"::warning title=Airlock::{escape_command_data(visible(message))}", flush=True)
    else:
        say(f"warning: {message}")


def say(text: str) -> None:
    print(f"airlock: {text}", file=sys.stderr, flush=True)


def outputs_command(args: argparse.Namespace) -> int:
    from airlock._commands._common import default_sessions_dir

    result = FinalizeResult()
    sessions: Path = args.sessions or default_sessions_dir()
    result.sessions = sealed_sessions(sessions) if sessions.is_dir() else []
    for session in result.sessions[-1:]:
        verify_into(session, result, trusted_keys())
    outputs = _outputs(result, "closed")
    platform = resolve_platform(args.platform, os.environ)
    if platform == "github":
        from airlock.ci.github import GitHubFiles

        GitHubFiles(os.environ).set_outputs(outputs)
    elif platform == "gitlab":
        from airlock.ci.gitlab import write_dotenv

        write_dotenv(_artifacts_dir(args, os.environ) / "airlock.env", _dotenv(outputs))
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
