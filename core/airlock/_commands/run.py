"""``airlock run [--policy F] [--sessions DIR] -- CMD…``: run CMD inside a recorded session."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from airlock._commands._common import add_flag, add_session_flags
from airlock.errors import UsageError

__all__ = ["register"]

COMMAND_NOT_FOUND = 127
T = TypeVar("T")


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "run",
        help="run a command inside a recorded, masked, sealed session",
        description=(
            "Run COMMAND inside an Airlock session. Its output is masked before it is shown or "
            "recorded; every process it starts is recorded; the log is sealed and signed at the "
            "end. The exit status is COMMAND's own (127 if it does not exist); Airlock's own "
            "failures use 80-87 and print a line starting with 'airlock: error'."
        ),
    )
    add_session_flags(parser)
    add_flag(
        parser,
        "--pty",
        env="AIRLOCK_PTY",
        choices=("auto", "always", "never"),
        help="override the policy's capture.pty",
    )
    add_flag(parser, "--strace", env="AIRLOCK_STRACE", help="path of the strace binary")
    add_flag(
        parser,
        "--sandbox",
        env="AIRLOCK_SANDBOX",
        choices=("required", "best_effort", "off"),
        help="contain the command in a bubblewrap sandbox (overrides the policy's sandbox.mode)",
    )
    add_flag(
        parser,
        "--broker",
        env="AIRLOCK_BROKER_URL",
        help="broker that witnesses checkpoints of the log as the session runs",
    )
    add_flag(parser, "--audience", env="AIRLOCK_AUDIENCE", help="the broker's OIDC audience")
    add_flag(parser, "--state-dir", env="AIRLOCK_STATE_DIR", type=Path, help="job state directory")
    add_flag(parser, "--quiet", env="AIRLOCK_QUIET", action="store_true", help="no summary line")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    argv = list(args.command)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise UsageError(
            "no command given", hint="usage: airlock run [OPTIONS] -- COMMAND [ARGS...]"
        )
    # Imported here so that `airlock --help` and the other commands start fast. The slow parts
    # of start-up (compiling the mask rules, probing strace, asking git who we are) start as
    # soon as the policy is known and run while the rest is imported and loaded.
    from airlock.policy import DEFAULT_POLICY, load_policy

    policy = load_policy(args.policy) if args.policy else DEFAULT_POLICY
    from airlock.capture.prepare import warm_up

    tracer_probe = warm_up(policy, args.strace)
    from airlock.ci import agent_environment, detect_identity, removed_names

    environ = dict(os.environ)
    identity = _Background(detect_identity, environ)
    from airlock.audit import load_signing_key
    from airlock.jobs.run import CommandNotFound, SessionRequest, run_session

    job = _job(args)
    request = SessionRequest(
        argv=tuple(argv),
        sessions_dir=args.sessions,
        policy=policy,
        identity=identity.result(),
        key=load_signing_key(args.key),
        agent_env=agent_environment(environ, policy),
        secret_env=environ,
        env_removed=tuple(removed_names(environ, policy)),
        use_pty=None if args.pty in (None, "auto") else args.pty == "always",
        policy_source=str(args.policy) if args.policy else None,
        strace_path=args.strace,
        tracer_probe=tracer_probe,
        credentials=job.credentials,
        witness=job.witness,
        broker_url=job.broker_url,
        job_token=job.job_token,
        sandbox=args.sandbox,
        key_path=args.key or _default_key_path(),
        state_dir=args.state_dir or _default_state_dir(),
    )
    try:
        outcome = run_session(request)
    except CommandNotFound as exc:
        print(f"airlock: error: {exc.explain()}", file=sys.stderr)
        return COMMAND_NOT_FOUND
    finally:
        job.close()
    if not args.quiet:
        manifest = outcome.manifest
        print(
            f"airlock: session {outcome.session_id} sealed ({manifest.get('event_count')} events, "
            f"exit {outcome.exit_status}): {outcome.path}",
            file=sys.stderr,
        )
    return outcome.exit_status


def _default_key_path() -> Path:
    from airlock.audit.keys import default_key_path

    return default_key_path()


def _default_state_dir() -> Path:
    from airlock.brokerclient import default_state_dir

    return default_state_dir()


class _Background(Generic[T]):
    """``fn(*args)`` on a daemon thread; :meth:`result` waits and returns or raises what it did."""

    def __init__(self, fn: Callable[..., T], *args: Any) -> None:
        self._outcome: list[tuple[bool, Any]] = []

        def call() -> None:
            try:
                self._outcome.append((True, fn(*args)))
            except BaseException as exc:  # handed over to result()
                self._outcome.append((False, exc))

        self._thread = threading.Thread(target=call, name="airlock-run-start", daemon=True)
        self._thread.start()

    def result(self) -> T:
        self._thread.join()
        ok, value = self._outcome[0]
        if not ok:
            raise value
        return cast(T, value)


class _Job:
    """What the broker gave this job: credentials to mask, and a witness for checkpoints."""

    def __init__(self) -> None:
        from airlock.jobs.run import IssuedSecret, Witness

        self.credentials: tuple[IssuedSecret, ...] = ()
        self.witness: Witness | None = None
        self.broker_url: str | None = None
        self.job_token: str | None = None
        self._close: list[Any] = []

    def close(self) -> None:
        for close in self._close:
            close()


def _job(args: argparse.Namespace) -> _Job:
    from airlock.brokerclient import default_state_dir, load_job_state
    from airlock.jobs.run import IssuedSecret

    job = _Job()
    state = load_job_state(args.state_dir or default_state_dir())
    if state is not None:
        job.broker_url, job.job_token = state.broker, state.job_token
        job.credentials = tuple(
            IssuedSecret(lease["grant"], lease["lease_id"], name, value)
            for lease in state.leases
            for name, value in lease.get("values", {}).items()
        )
    if not args.broker:
        return job
    from airlock.brokerclient import BrokerClient

    client = BrokerClient(args.broker)
    job._close.append(client.close)
    if state is None or state.broker != client.url:
        if not args.audience:
            raise UsageError(
                "--broker needs the job token from `airlock credentials`, or --audience to get one"
            )
        from airlock.oidc import acquire_token

        state = client.exchange(acquire_token(args.audience), [])
        job.broker_url, job.job_token = state.broker, state.job_token
    job_token = state.job_token

    def witness(session_id: str, seq: int, head: str) -> dict[str, Any]:
        return client.checkpoint(job_token, session_id, seq, head)

    job.witness = witness
    return job
