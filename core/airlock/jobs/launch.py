"""``airlock run``'s orchestration from its resolved options: the policy, the job's identity,
the agent's environment, the signing key and what the broker gave this job (credentials to
mask, a witness for checkpoints), then :func:`airlock.jobs.run.run_session`.

The CLI (``airlock run``) and the bracket's recorder (:mod:`airlock.jobs.recorder`) both call
:func:`run_command`; neither re-enters the other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from airlock.errors import UsageError
from airlock.jobs.request import IssuedSecret, SessionOutcome, Witness

if TYPE_CHECKING:
    from airlock.policy import Policy
    from airlock.policy.default import PolicySource

__all__ = ["RunOptions", "run_and_report", "run_command"]

COMMAND_NOT_FOUND = 127

T = TypeVar("T")


@dataclass(frozen=True)
class RunOptions:
    """What ``airlock run``'s flags (or their ``AIRLOCK_*`` variables) said; None: the default."""

    sessions: Path
    policy: Path | None = None
    key: Path | None = None
    pty: str | None = None  # auto | always | never
    strace: str | None = None
    sandbox: str | None = None  # required | best_effort | off; None: the policy's sandbox.mode
    broker: str | None = None  # a broker that witnesses checkpoints as the session runs
    audience: str | None = None
    state_dir: Path | None = None
    policy_text: str | None = None  # an inline policy (from the workflow), instead of a file
    policy_sha256: str | None = None  # the pin: SHA-256 of the policy file's exact bytes


def run_command(
    argv: Sequence[str], options: RunOptions, environ: Mapping[str, str]
) -> SessionOutcome:
    """Run ``argv`` in a recorded session (raises CommandNotFound, AirlockError)."""
    if not argv:
        raise UsageError(
            "no command given", hint="usage: airlock run [OPTIONS] -- COMMAND [ARGS...]"
        )
    # Imported here so that callers start fast. The slow parts of start-up run in the
    # background while the rest is imported and loaded: asking git who we are and probing
    # strace (processes to wait for) start first, before the policy is read (its probe is
    # unused when the policy turns exec capture off); compiling the mask rules once the
    # policy is known.
    from airlock.capture.tracer import start_probe
    from airlock.ci import agent_environment, detect_identity, removed_names

    env = dict(environ)
    identity = _Background(detect_identity, env)
    early_probe = start_probe(options.strace)
    policy, origin = _session_policy(options, env)
    from airlock.capture.prepare import warm_up

    tracer_probe = warm_up(policy, options.strace, early_probe)
    from airlock.audit import load_signing_key
    from airlock.jobs.run import SessionRequest, run_session

    job = _job(options)
    try:
        request = SessionRequest(
            argv=tuple(argv),
            sessions_dir=options.sessions,
            policy=policy,
            identity=identity.result(),
            key=load_signing_key(options.key),
            agent_env=agent_environment(env, policy),
            secret_env=env,
            env_removed=tuple(removed_names(env, policy)),
            use_pty=None if options.pty in (None, "auto") else options.pty == "always",
            policy_source=str(options.policy) if options.policy else None,
            policy_origin=origin.to_dict(),
            strace_path=options.strace,
            tracer_probe=tracer_probe,
            credentials=job.credentials,
            witness=job.witness,
            broker_url=job.broker_url,
            job_token=job.job_token,
            sandbox=options.sandbox,
            key_path=options.key or _default_key_path(),
            state_dir=options.state_dir or _default_state_dir(),
        )
        return run_session(request)
    finally:
        job.close()


def _session_policy(options: RunOptions, env: dict[str, str]) -> tuple[Policy, PolicySource]:
    """The policy and where it came from. Without a file, inline text or pin, the defaults'
    stand-in (:mod:`airlock.policy.default`): pydantic and the models load only if a session
    reads a part of the policy that the stand-in does not hold."""
    if options.policy is None and options.policy_text is None and options.policy_sha256 is None:
        from airlock.policy.default import PolicySource, default_run_policy

        return cast("Policy", default_run_policy()), PolicySource("default", None, None)
    from airlock.policy.pin import load_session_policy

    return load_session_policy(
        options.policy, text=options.policy_text, pin=options.policy_sha256, environ=env
    )


def run_and_report(
    argv: Sequence[str], options: RunOptions, environ: Mapping[str, str], *, quiet: bool = False
) -> int:
    """:func:`run_command` for an entry point: the command's exit status, or Airlock's own
    failure as an ``airlock: error: …`` line on stderr and its exit code (127: no command)."""
    import os
    import sys

    from airlock.errors import AirlockError, ExitCode, MissingExtra
    from airlock.jobs.request import CommandNotFound

    def fail(text: str, code: int) -> int:
        print(f"airlock: error: {text}", file=sys.stderr)
        return code

    try:
        outcome = run_command(argv, options, environ)
    except CommandNotFound as exc:
        return fail(exc.explain(), COMMAND_NOT_FOUND)
    except AirlockError as exc:
        return fail(exc.explain(), int(exc.exit_code))
    except ModuleNotFoundError as exc:  # an optional dependency the policy's gateways need
        missing = MissingExtra.from_import(exc, command="run")
        if missing is not None:
            return fail(missing.explain(), int(missing.exit_code))
        if os.environ.get("AIRLOCK_DEBUG"):
            raise
        return fail(_internal_text(exc), int(ExitCode.INTERNAL))
    except Exception as exc:  # a bug: a foreign exception's message may hold data, not shown
        if os.environ.get("AIRLOCK_DEBUG"):
            raise
        return fail(_internal_text(exc), int(ExitCode.INTERNAL))
    if not quiet:
        print(
            f"airlock: session {outcome.session_id} sealed "
            f"({outcome.manifest.get('event_count')} events, exit {outcome.exit_status}): "
            f"{outcome.path}",
            file=sys.stderr,
        )
    return outcome.exit_status


def _internal_text(exc: Exception) -> str:
    return (
        f"internal error ({type(exc).__name__}); "
        "rerun with AIRLOCK_DEBUG=1 for a traceback and report it"
    )


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
        self.credentials: tuple[IssuedSecret, ...] = ()
        self.witness: Witness | None = None
        self.broker_url: str | None = None
        self.job_token: str | None = None
        self._close: list[Any] = []

    def close(self) -> None:
        for close in self._close:
            close()


def _job(options: RunOptions) -> _Job:
    from airlock.brokerclient import default_state_dir, load_job_state

    job = _Job()
    state = load_job_state(options.state_dir or default_state_dir())
    if state is not None:
        job.broker_url, job.job_token = state.broker, state.job_token
        job.credentials = tuple(
            IssuedSecret(lease["grant"], lease["lease_id"], name, value)
            for lease in state.leases
            for name, value in lease.get("values", {}).items()
        )
    if not options.broker:
        return job
    from airlock.brokerclient import BrokerClient

    client = BrokerClient(options.broker)
    job._close.append(client.close)
    if state is None or state.broker != client.url:
        if not options.audience:
            job.close()
            raise UsageError(
                "--broker needs the job token from `airlock credentials`, or --audience to get one"
            )
        from airlock.oidc import acquire_token

        try:
            state = client.exchange(acquire_token(options.audience), [])
        except BaseException:
            job.close()
            raise
        job.broker_url, job.job_token = state.broker, state.job_token
    job_token = state.job_token

    def witness(session_id: str, seq: int, head: str) -> dict[str, Any]:
        return client.checkpoint(job_token, session_id, seq, head)

    job.witness = witness
    return job
