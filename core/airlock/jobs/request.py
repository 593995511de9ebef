"""What ``airlock run`` asks for (:class:`SessionRequest`) and gets back, and the session
helpers other commands share: the masker, its correlation key, sealing abandoned sessions."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airlock.capture.tracer import TracerStatus
from airlock.errors import AirlockError, UsageError
from airlock.events import Identity

if TYPE_CHECKING:  # `airlock run` imports this module before it starts git and the strace
    # probe; pydantic and the policy models load while those run (jobs/launch.py)
    from airlock.audit import SigningKey
    from airlock.mask import Masker
    from airlock.policy import Policy

__all__ = [
    "CommandNotFound",
    "IssuedSecret",
    "SessionOutcome",
    "SessionRequest",
    "Witness",
    "build_masker",
    "correlation_key",
    "restore_abandoned_checkouts",
    "seal_abandoned_sessions",
]


class CommandNotFound(UsageError):
    """The command does not exist; ``airlock run`` returns 127 for it, as a shell would."""


@dataclass(frozen=True)
class IssuedSecret:
    """A credential issued to this job (by the broker): masked everywhere, logged as a hash."""

    grant: str
    lease_id: str
    name: str
    value: str = field(repr=False)


# (session id, seq, head) → the witness's signed receipt; raises when the witness is unreachable.
Witness = Callable[[str, int, str], Mapping[str, Any]]


@dataclass(frozen=True)
class SessionRequest:
    argv: tuple[str, ...]
    sessions_dir: Path
    policy: Policy
    identity: Identity
    key: SigningKey
    agent_env: dict[str, str]  # already scrubbed by the caller
    secret_env: Mapping[str, str]  # where mask.env values are read (the unscrubbed environment)
    env_removed: tuple[str, ...] = ()
    cwd: str = field(default_factory=os.getcwd)
    use_pty: bool | None = None  # None: decide from the policy and whether stdout is a terminal
    policy_source: str | None = None
    policy_origin: Mapping[str, str | None] | None = None  # PolicySource.to_dict()
    strace_path: str | None = None
    credentials: tuple[IssuedSecret, ...] = ()
    witness: Witness | None = None
    witness_interval: float = 5.0
    broker_url: str | None = None  # for approvals through the broker (policy approvals.backend)
    tracer_probe: Callable[[], TracerStatus] | None = None  # a probe already started (prepare)
    job_token: str | None = field(default=None, repr=False)
    sandbox: str | None = None  # required | best_effort | off; None: the policy's sandbox.mode
    key_path: Path | None = None  # hidden from the sandbox, with the sessions and state dirs
    state_dir: Path | None = None


@dataclass(frozen=True)
class SessionOutcome:
    session_id: str
    path: Path
    exit_status: int
    manifest: dict[str, Any]


def build_masker(policy: Policy, secret_env: Mapping[str, str], hmac_key: bytes) -> Masker:
    """The session's masker: built-in rules, the policy's patterns, and its env secrets."""
    from airlock.capture.prepare import mask_settings
    from airlock.mask import Masker

    return Masker(mask_settings(policy, secret_env, hmac_key))


def correlation_key(key: SigningKey) -> bytes:
    """A stable secret only the signing-key holder can compute (Ed25519 signs deterministically)."""
    return hashlib.sha256(key.sign(b"airlock:mask-correlation:v1")).digest()


def seal_abandoned_sessions(sessions_dir: Path, key: SigningKey) -> list[Path]:
    """Seal, as incomplete, sessions whose recorder died (no manifest, log not locked) and
    that a recorder of this machine opened: never a directory that only looks like one."""
    from airlock.audit import find_unsealed, seal_session
    from airlock.audit.reader import EVENTS_FILE

    sealed = []
    for path in find_unsealed(sessions_dir, opened_here_only=True):
        if _is_locked(path / EVENTS_FILE):
            continue  # a live `airlock run` owns it
        with contextlib.suppress(AirlockError):
            seal_session(path, key, reason="the recorder stopped before sealing (found later)")
            sealed.append(path)
    return sealed


def restore_abandoned_checkouts(state_dir: Path, say: Callable[[str], None]) -> int:
    """Put back the job's git credentials a killed ``airlock run`` left hidden in the
    checkout (see airlock.sandbox.checkout); returns how many configs were restored."""
    from airlock.sandbox.checkout import restore_abandoned

    try:
        restored = restore_abandoned(state_dir)
    except OSError as exc:
        say(f"warning: cannot put back the git credentials a killed run hid: {exc.strerror}")
        return 0
    if restored:
        say(f"put back the job's git credentials in {restored} git config(s) a killed run hid")
    return restored


def _is_locked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
