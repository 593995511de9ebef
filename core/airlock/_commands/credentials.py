"""``airlock credentials --broker URL --grant NAME…``: exchange the job's OIDC token for scoped,
short-lived credentials and export them for the CI platform; ``--revoke`` ends them."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airlock._commands._common import add_flag
from airlock.errors import UsageError

__all__ = ["register"]

EXPORTS = ("auto", "github", "gitlab", "env-file", "none")
# Helpers that read what was already issued (the job state); they never exchange again.
HELPERS = ("aws-process", "git-credential")


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "credentials",
        help="exchange the job's OIDC token at the broker for scoped, short-lived credentials",
        description=(
            "Exchange the job's OIDC token at the broker for the named grants and export them: "
            "GitHub (each value masked with ::add-mask:: before it is written to GITHUB_ENV), "
            "GitLab (a dotenv report), or a 0600 env file. The job state (job token, issued "
            "values) is kept 0600 outside the workspace so that `airlock run` masks every value "
            "and `airlock credentials --revoke` ends the leases at job end."
        ),
    )
    add_flag(parser, "--broker", env="AIRLOCK_BROKER_URL", help="broker base URL")
    add_flag(
        parser,
        "--grant",
        env="AIRLOCK_GRANTS",
        action="append",
        default=[],
        help="grant name (repeat)",
    )
    add_flag(parser, "--audience", env="AIRLOCK_AUDIENCE", help="the broker's OIDC audience")
    add_flag(
        parser,
        "--id-token-variable",
        env="AIRLOCK_ID_TOKEN_VARIABLE",
        default="AIRLOCK_ID_TOKEN",
        help="GitLab: the id_tokens variable that holds the token",
    )
    add_flag(
        parser,
        "--export",
        env="AIRLOCK_EXPORT",
        choices=EXPORTS,
        default="auto",
        help="where values go",
    )
    add_flag(
        parser,
        "--out",
        env="AIRLOCK_CREDENTIALS_OUT",
        type=Path,
        help="file for env-file/gitlab export",
    )
    add_flag(parser, "--state-dir", env="AIRLOCK_STATE_DIR", type=Path, help="job state directory")
    add_flag(
        parser,
        "--revoke",
        env="AIRLOCK_REVOKE",
        action="store_true",
        help="revoke this job's leases",
    )
    add_flag(
        parser,
        "--hold",
        env="AIRLOCK_HOLD",
        action="store_true",
        help="keep the issued values for Airlock's gateways only (credential: {grant: NAME}); "
        "nothing is exported to the job",
    )
    add_flag(
        parser,
        "--gateway",
        env="AIRLOCK_GATEWAYS",
        action="append",
        default=[],
        help="central gateway to get a ticket for; exported as <NAME>_TICKET (repeat)",
    )
    parser.add_argument(
        "--helper",
        choices=HELPERS,
        help="print issued values for a tool: AWS credential_process JSON, or a git credential "
        "helper answer (git passes `get` and the request on stdin)",
    )
    parser.add_argument("helper_args", nargs="*", help=argparse.SUPPRESS)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from airlock.brokerclient import (
        default_state_dir,
        load_job_state,
    )

    state_dir: Path = args.state_dir or default_state_dir()
    if args.helper:
        state = load_job_state(state_dir)
        if state is None:
            raise UsageError(
                "no credentials issued in this job", hint="run `airlock credentials` first"
            )
        return _helper(args.helper, list(args.helper_args), state.leases)
    if args.revoke:
        from airlock.jobs.credentials import revoke_job_leases

        revoked = revoke_job_leases(state_dir)
        if revoked is None:
            print("airlock: no leases to revoke (no job state)", file=sys.stderr)
            return 0
        print(f"airlock: revoked {revoked} lease(s)", file=sys.stderr)
        return 0
    if not args.broker or not args.audience:
        raise UsageError(
            "--broker and --audience are required",
            hint="or set AIRLOCK_BROKER_URL and AIRLOCK_AUDIENCE",
        )
    from airlock.jobs.credentials import issue_credentials

    state = issue_credentials(
        args.broker,
        args.audience,
        args.grant,
        state_dir=state_dir,
        gateways=args.gateway,
        id_token_variable=args.id_token_variable,
    )
    _export("none" if args.hold else args.export, state.values(), args.out)
    say_issued(state.leases, state.rule_id)
    return 0


def say_issued(leases: Sequence[Mapping[str, Any]], rule_id: str) -> None:
    grants = ", ".join(str(lease["grant"]) for lease in leases) or "none"
    print(f"airlock: issued {grants} under rule {rule_id}", file=sys.stderr)


def _export(mode: str, values: dict[str, str], out: Path | None) -> None:
    from airlock.brokerclient import default_state_dir

    if mode == "auto":
        mode = _platform_export()
    if mode == "github":
        export_github(values)
    elif mode == "gitlab":
        # Not a dotenv report: that is a downloadable artifact whose variables flow, unmasked,
        # into later jobs. A 0600 script outside the project, sourced in this job, is not.
        from airlock.ci.gitlab import write_env_script

        target = out or (default_state_dir() / "credentials.env")
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_env_script(target, values)
        print(f"airlock: credentials written to {target} (source it in this job)", file=sys.stderr)
    elif mode == "env-file":
        if out is None:
            raise UsageError("--export env-file needs --out FILE (outside the workspace)")
        from airlock.ci.gitlab import write_env_script

        write_env_script(out, values)


def _platform_export() -> str:
    if os.environ.get("GITHUB_ACTIONS") == "true":
        return "github"
    if os.environ.get("GITLAB_CI") == "true":
        return "gitlab"
    return "none"


def export_github(values: dict[str, str]) -> None:
    from airlock.ci.github import mask_commands, set_env

    # Mask every value, line by line, before it is written anywhere the runner reads.
    for value in values.values():
        for command in mask_commands(value):
            print(command, flush=True)
    env_file = os.environ.get("GITHUB_ENV")
    if not env_file:
        raise UsageError("GITHUB_ENV is not set: --export github works inside GitHub Actions")
    for name, value in values.items():
        set_env(Path(env_file), name, value)


def _helper(kind: str, helper_args: list[str], leases: tuple[dict[str, Any], ...]) -> int:
    if kind == "aws-process":
        return _aws_process(leases)
    if helper_args[:1] != ["get"]:
        return 0  # git also calls `store` and `erase`: nothing to do, the broker owns the token
    return _git_credential(leases)


def _aws_process(leases: tuple[dict[str, Any], ...]) -> int:
    """The JSON an AWS SDK reads from `credential_process` (Version 1)."""
    import json
    from datetime import UTC, datetime

    lease = next((x for x in leases if "AWS_ACCESS_KEY_ID" in x.get("values", {})), None)
    if lease is None:
        raise UsageError("no AWS credentials were issued in this job", hint="request an aws grant")
    values = lease["values"]
    expiration = datetime.fromtimestamp(float(lease["expires_at"]), UTC)
    print(
        json.dumps(
            {
                "Version": 1,
                "AccessKeyId": values["AWS_ACCESS_KEY_ID"],
                "SecretAccessKey": values["AWS_SECRET_ACCESS_KEY"],
                "SessionToken": values.get("AWS_SESSION_TOKEN", ""),
                "Expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
    )
    return 0


def _git_credential(leases: tuple[dict[str, Any], ...]) -> int:
    """Answer git's `get`: a forge token issued in this job, for HTTPS remotes."""
    request = dict(line.split("=", 1) for line in sys.stdin.read().splitlines() if "=" in line)
    names = ("GITHUB_TOKEN", "GITLAB_TOKEN")
    token = next((x["values"][n] for x in leases for n in names if n in x.get("values", {})), None)
    if token is None or request.get("protocol") != "https":
        return 0  # no answer: git tries its other helpers, or asks
    user = (
        "oauth2" if any("GITLAB_TOKEN" in x.get("values", {}) for x in leases) else "x-access-token"
    )
    print(f"username={user}\npassword={token}")
    return 0
