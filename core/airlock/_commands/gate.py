"""`airlock gate request|decide|list`: ask for an approval and wait; answer one; list pending."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airlock._commands._common import add_flag, add_policy_flags
from airlock.audit import SigningKey, load_signing_key
from airlock.ci.identity import detect_identity
from airlock.errors import ApprovalDenied, ApprovalTimedOut, ExitCode, UsageError
from airlock.gate import (
    EXPIRED,
    ApprovalBackend,
    Decision,
    Operation,
    decide,
    pending,
)
from airlock.jobs.approvals import BACKENDS, BackendSettings, approval_backend
from airlock.mask import Masker
from airlock.policy.broker_config import parse_duration

__all__ = ["register"]

_BACKENDS = BACKENDS
_KINDS = ("command", "sql", "http")
_MAX_OPERATION = 1024 * 1024
_DIR_DEFAULT = Path(".airlock") / "approvals"


def register(sub: Any) -> None:
    """Add ``airlock gate`` and its subcommands."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "gate",
        help="ask for a human approval and wait for it (exit 0 approved, 82 denied, 83 expired)",
        description="Approval gates: ask, answer, list. Unanswered requests expire to a denial.",
    )
    actions = parser.add_subparsers(dest="gate_command", metavar="ACTION", required=True)
    _register_request(actions)
    _register_decide(actions)
    _register_list(actions)


def _register_request(actions: Any) -> None:
    parser: argparse.ArgumentParser = actions.add_parser(
        "request",
        help="ask for approval of an operation and wait: exit 0 approved, 82 denied, 83 expired",
        description=(
            "Ask for approval of an operation (its text is masked before anyone sees it) and "
            "wait for the decision. Exit 0 when approved, 82 when denied, 83 when nobody "
            "answered before --timeout (an expired request is a denial), 85 when the backend "
            "cannot be used."
        ),
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--operation", metavar="TEXT", help="the operation, as text")
    what.add_argument("--file", type=Path, metavar="F", help="read the operation from F (- stdin)")
    add_flag(parser, "--backend", env="AIRLOCK_GATE_BACKEND", choices=_BACKENDS, default="console")
    add_flag(
        parser,
        "--timeout",
        env="AIRLOCK_GATE_TIMEOUT",
        default="30m",
        help="how long to wait, e.g. 90s, 30m, 1h (then: denied as expired)",
    )
    _add_dir_flag(parser)
    add_flag(parser, "--kind", env="AIRLOCK_GATE_KIND", choices=_KINDS, default="command")
    add_flag(
        parser, "--rule-id", env="AIRLOCK_GATE_RULE_ID", default="manual", help="shown and bound"
    )
    add_flag(parser, "--session-id", env="AIRLOCK_SESSION_ID", help="bound into the hash")
    add_policy_flags(parser, "session policy whose mask rules clean the operation text")
    add_flag(parser, "--key", env="AIRLOCK_KEY", type=Path, metavar="PEM", help="signing key")
    add_flag(parser, "--json", env="AIRLOCK_JSON", action="store_true", help="print JSON")
    parser.set_defaults(func=_request)


def _register_decide(actions: Any) -> None:
    parser: argparse.ArgumentParser = actions.add_parser(
        "decide",
        help="approve or deny a pending request of the file backend",
        description="Write the decision on a request of the file backend (the first one stands).",
    )
    parser.add_argument("request_id", metavar="ID", help="the request id (see `airlock gate list`)")
    verdict = parser.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--approve", action="store_true", help="approve the operation")
    verdict.add_argument("--deny", action="store_true", help="deny the operation")
    _add_dir_flag(parser)
    add_flag(parser, "--by", env="AIRLOCK_GATE_BY", help="who decides (default: your login)")
    add_flag(parser, "--reason", env="AIRLOCK_GATE_REASON", default="", help="why")
    parser.set_defaults(func=_decide)


def _register_list(actions: Any) -> None:
    parser: argparse.ArgumentParser = actions.add_parser(
        "list",
        help="list pending requests of the file backend",
        description="List the requests of the file backend that have no decision yet.",
    )
    _add_dir_flag(parser)
    add_flag(parser, "--json", env="AIRLOCK_JSON", action="store_true", help="print JSON")
    parser.set_defaults(func=_list)


def _add_dir_flag(parser: argparse.ArgumentParser) -> None:
    add_flag(
        parser,
        "--dir",
        env="AIRLOCK_GATE_DIR",
        type=Path,
        default=_DIR_DEFAULT,
        help="file backend directory (requests/ and decisions/)",
    )


def _request(args: argparse.Namespace) -> int:
    timeout = _timeout(args.timeout)
    op = _operation(args)
    key = load_signing_key(args.key)
    backend = _backend(args, key)
    request_id = backend.request(op, timeout=timeout)
    _announce(args, backend, request_id, op)
    try:
        decision = asyncio.run(backend.wait(request_id, timeout))
    finally:
        backend.close()
    _report(args, request_id, op, decision)
    if decision.approved:
        return int(ExitCode.OK)
    if decision.reason == EXPIRED:
        raise ApprovalTimedOut(
            f"nobody answered approval request {request_id} within {args.timeout}: denied",
            hint="answer sooner, or raise --timeout",
        )
    raise ApprovalDenied(
        f"approval request {request_id} was denied by {decision.by}"
        + (f": {decision.reason}" if decision.reason else ""),
        hint="the operation must not run; change it or ask someone entitled to approve",
    )


def _timeout(raw: str) -> float:
    try:
        seconds = parse_duration(int(raw) if raw.isdigit() else raw)
    except ValueError as exc:
        raise UsageError(
            f"--timeout {raw!r} is not a duration", hint="use e.g. 90s, 30m, 1h30m"
        ) from exc
    if seconds <= 0:
        raise UsageError("--timeout must be positive", hint="use e.g. 90s, 30m, 1h30m")
    return float(seconds)


def _operation(args: argparse.Namespace) -> Operation:
    text = _operation_text(args)
    masked = _masker(args).mask_text(text)
    identity = detect_identity(os.environ)
    return Operation(
        kind=args.kind,
        text=masked,
        rule_id=args.rule_id,
        repository=identity.repository,
        commit=identity.sha,
        run_id=identity.run_id,
        session_id=args.session_id,
    )


def _masker(args: argparse.Namespace) -> Masker:
    """What reviewers see is masked like session output: the policy's secrets and patterns,
    and everything the broker issued to this job (values and job token)."""
    from airlock._commands._common import session_policy
    from airlock.audit import load_signing_key
    from airlock.brokerclient import default_state_dir, load_job_state
    from airlock.jobs.request import build_masker, correlation_key

    policy, _ = session_policy(args)
    masker = build_masker(policy, os.environ, correlation_key(load_signing_key(args.key)))
    state = load_job_state(default_state_dir())
    if state is not None:
        for value in (*state.values().values(), state.job_token):
            masker.add_secret(value, "credential")
    return masker


def _operation_text(args: argparse.Namespace) -> str:
    if args.operation is not None:
        text: str = args.operation
    elif args.file is not None:
        text = _read_operation_file(args.file)
    else:
        raise UsageError("say what to approve", hint="pass --operation TEXT or --file F")
    if not text.strip():
        raise UsageError("the operation is empty", hint="pass the exact operation to approve")
    return text


def _read_operation_file(path: Path) -> str:
    try:
        if str(path) == "-":
            raw = sys.stdin.buffer.read(_MAX_OPERATION + 1)
        else:
            with path.open("rb") as handle:
                raw = handle.read(_MAX_OPERATION + 1)
    except OSError as exc:
        raise UsageError(f"could not read {path}: {exc.strerror}", hint="check --file") from exc
    if len(raw) > _MAX_OPERATION:
        raise UsageError(f"{path} is larger than 1 MiB", hint="approve a summary or a hash")
    return raw.decode("utf-8", "replace")


def _backend(args: argparse.Namespace, key: SigningKey) -> ApprovalBackend:
    kind: str = args.backend
    settings = BackendSettings(
        directory=args.dir, deny_reason="the deny backend refuses every operation"
    )
    if kind in ("github-check", "gitlab"):
        settings = _broker_settings(kind, settings)
    return approval_backend(kind, settings, key=key)


def _broker_settings(kind: str, settings: BackendSettings) -> BackendSettings:
    """Through the broker (as its GitHub App / GitLab bot), with this job's token."""
    from airlock.brokerclient import default_state_dir, load_job_state
    from airlock.gate.broker import ForgeTarget

    state = load_job_state(default_state_dir())
    if state is None:
        raise UsageError(
            f"the {kind} backend asks through the broker, and this job has no broker token",
            hint="run `airlock credentials --broker URL --audience AUD` first",
        )
    target = ForgeTarget(
        pull_request=_number(os.environ.get("AIRLOCK_PULL_REQUEST")),
        merge_request=_number(os.environ.get("CI_MERGE_REQUEST_IID")),
    )
    return dataclasses.replace(
        settings, broker_url=state.broker, job_token=state.job_token, target=target
    )


def _number(raw: str | None) -> int | None:
    return int(raw) if raw and raw.isdigit() else None


def _announce(args: argparse.Namespace, backend: ApprovalBackend, rid: str, op: Operation) -> None:
    if args.backend == "file":
        print(
            f"airlock: waiting for approval {rid} (operation {op.operation_hash()[:16]}); "
            f"answer with `airlock gate decide {rid} --approve --dir {args.dir}`",
            file=sys.stderr,
        )


def _report(args: argparse.Namespace, rid: str, op: Operation, decision: Decision) -> None:
    if args.json:
        out: Mapping[str, Any] = {
            "request_id": rid,
            "operation": op.to_dict(),
            **decision.to_event(rid),
        }
        print(json.dumps(out, indent=2, sort_keys=True))
    elif decision.approved:
        print(f"approved by {decision.by} at {decision.at} (request {rid})")


def _decide(args: argparse.Namespace) -> int:
    by = args.by or _login()
    written = decide(args.dir, args.request_id, approved=args.approve, by=by, reason=args.reason)
    verdict = "approved" if written["approved"] else "denied"
    print(f"{verdict} {args.request_id} (operation {written['operation_hash'][:16]}) as {by}")
    return int(ExitCode.OK)


def _list(args: argparse.Namespace) -> int:
    items = list(pending(args.dir))
    if args.json:
        print(json.dumps(items, indent=2, sort_keys=True))
        return int(ExitCode.OK)
    if not items:
        print(f"no pending requests in {args.dir}")
    for item in items:
        op = item["operation"]
        print(f"{item['request_id']}  {op['kind']}  rule {op['rule_id']}  {op['text'][:80]}")
    return int(ExitCode.OK)


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid{os.getuid()}"
