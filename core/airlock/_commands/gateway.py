"""``airlock gateway --policy F``: run the policy's gateways standalone, until stopped.

The gateway process records into a session of its own and writes the agent-side variables
(addresses and tickets) to a 0600 env file. This is the building block of central mode: run it
next to the broker, off the runner, so that the credentials never enter the job.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airlock._commands._common import add_flag, add_session_flags
from airlock.errors import UsageError
from airlock.gateway.tickets import BrokerTicket

__all__ = ["register"]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "gateway",
        help="run the policy's gateways standalone (central mode), until SIGTERM",
        description=(
            "Start the gateways declared in the policy, record every statement and request in a "
            "session of their own, write the agent-side variables (addresses, tickets) to a "
            "0600 env file, and serve until SIGINT/SIGTERM; then seal the session."
        ),
    )
    add_session_flags(parser)
    add_flag(
        parser,
        "--env-file",
        env="AIRLOCK_GATEWAY_ENV_FILE",
        type=Path,
        help="where to write the agent's variables (0600); default: print nothing secret",
    )
    add_flag(
        parser,
        "--broker",
        env="AIRLOCK_BROKER_URL",
        help="central mode: check the tickets jobs present with this broker",
    )
    add_flag(
        parser,
        "--gateway-token-env",
        env="AIRLOCK_GATEWAY_TOKEN_ENV",
        default="AIRLOCK_GATEWAY_TOKEN",
        help="variable holding this gateway's token for the broker (its SHA-256 is in "
        "the broker's central_gateways:)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from airlock._commands._common import session_policy
    from airlock.audit import SessionWriter, load_signing_key
    from airlock.ci import detect_identity
    from airlock.events import EventType
    from airlock.gate import ApprovalBackend, DenyBackend, FileBackend, approver
    from airlock.gateway.runtime import start_gateways
    from airlock.jobs.request import build_masker, correlation_key

    if not args.policy:
        raise UsageError("--policy is required", hint="airlock gateway --policy airlock.yaml")
    policy, _ = session_policy(args)
    if not policy.gateways:
        raise UsageError("the policy declares no gateways", hint="add a gateways: section")
    key = load_signing_key(args.key)
    environ = dict(os.environ)
    masker = build_masker(policy, environ, correlation_key(key))
    writer = SessionWriter.create(args.sessions)
    writer.append(
        EventType.SESSION_START,
        {
            "identity": detect_identity(environ).to_dict(),
            "argv": ["airlock", "gateway"],
            "mode": "central",
        },
    )
    backend: ApprovalBackend
    if policy.approvals.backend == "file":
        backend = FileBackend(Path(policy.approvals.dir), key=key, record=writer.append)
    else:  # no terminal to ask, no job to post from: held operations are refused
        backend = DenyBackend(key=key, record=writer.append, reason="no approver in central mode")
    running = start_gateways(
        policy,
        session_id=writer.session_id,
        masker=masker,
        record=writer.append,
        approve=approver(backend, float(policy.approvals.timeout), session_id=writer.session_id),
        environ=environ,
        ticket_for=_broker_tickets(args, environ, writer.session_id),
    )
    try:
        for gateway in running.described:
            writer.append(EventType.GATEWAY_STARTED, gateway)
            rows = f", {gateway['row_path']} row path" if "row_path" in gateway else ""
            print(
                f"airlock: gateway {gateway['name']} ({gateway['kind']}{rows}) at "
                f"{gateway['address']}",
                file=sys.stderr,
            )
        if args.env_file:
            _write_env(args.env_file, running.env)
        _wait_for_stop()
    finally:
        running.close()
        writer.append(EventType.SESSION_END, {"exit_status": 0})
        writer.seal(key, exit_code=0)
    return 0


def _broker_tickets(
    args: argparse.Namespace, environ: dict[str, str], session_id: str
) -> Callable[[str], BrokerTicket] | None:
    if not args.broker:
        return None
    token = environ.get(args.gateway_token_env, "")
    if not token:
        raise UsageError(
            f"central mode needs this gateway's broker token in {args.gateway_token_env}",
            hint="set it, or choose the variable with --gateway-token-env",
        )
    return lambda name: BrokerTicket(session_id, name, args.broker, token)


def _write_env(path: Path, env: dict[str, str]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        for name, value in sorted(env.items()):
            out.write(f"{name}={value}\n")


def _wait_for_stop() -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda _s, _f: stop.set())
    while not stop.wait(3600):
        pass
