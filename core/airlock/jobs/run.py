"""One recorded session: mask, show and log a command's output and processes, then seal.

This is where the domains meet: the policy says how, the masker cleans every byte before it
is shown or stored, the runner drives the process, the audit writer chains and seals. The CLI
(an edge) prepares the inputs that depend on the CI platform: identity and the agent's
environment.

Fail closed: when exec capture is required and the tracer cannot run, nothing starts; when the
log cannot be written, the command is stopped and the session is sealed incomplete where the
disk still allows it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airlock import __version__
from airlock.audit import SessionWriter, SigningKey, find_unsealed, seal_session
from airlock.audit.pending import PendingSpool
from airlock.capture.exectrace import ProcessExec, ProcessExit
from airlock.capture.prepare import mask_settings
from airlock.capture.runner import Command, ProcessRunner, RunResult
from airlock.capture.tracer import TracerStatus, probe_strace
from airlock.errors import AirlockError, InfrastructureUnavailable, RecordingError, UsageError
from airlock.events import EventType, Identity
from airlock.jobs.sandboxed import effective_mode, run_checked, sandbox_spec, start_for_session
from airlock.mask import Masker, StreamMasker
from airlock.policy import Policy
from airlock.sandbox import RunningSandbox, SandboxSpec, SandboxUnavailable

if TYPE_CHECKING:  # gateways and approvals load only when the policy declares gateways
    from airlock.egress import EgressProxy
    from airlock.gate import ApprovalBackend, Approve
    from airlock.gate.interface import Record
    from airlock.gateway.runtime import RunningGateways

__all__ = [
    "CommandNotFound",
    "IssuedSecret",
    "SessionOutcome",
    "SessionRequest",
    "Witness",
    "build_masker",
    "run_session",
    "seal_abandoned_sessions",
]

_TERMINAL_FD = {"stdout": 1, "pty": 1, "stderr": 2}
_M_TRIM_THRESHOLD = -1  # mallopt(3) parameters
_M_MMAP_THRESHOLD = -3


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
    return Masker(mask_settings(policy, secret_env, hmac_key))


def correlation_key(key: SigningKey) -> bytes:
    """A stable secret only the signing-key holder can compute (Ed25519 signs deterministically)."""
    return hashlib.sha256(key.sign(b"airlock:mask-correlation:v1")).digest()


def seal_abandoned_sessions(sessions_dir: Path, key: SigningKey) -> list[Path]:
    """Seal, as incomplete, sessions whose recorder died (no manifest, log not locked)."""
    sealed = []
    for path in find_unsealed(sessions_dir):
        if _is_locked(path / "events.jsonl"):
            continue  # a live `airlock run` owns it
        with contextlib.suppress(AirlockError):
            seal_session(path, key, reason="the recorder stopped before sealing (found later)")
            sealed.append(path)
    return sealed


def run_session(request: SessionRequest) -> SessionOutcome:
    """Run the command of ``request`` in a recorded session and seal it."""
    if not request.argv:
        raise UsageError(
            "no command given", hint="usage: airlock run [OPTIONS] -- COMMAND [ARGS...]"
        )
    _resolve_command(request.argv[0], request.agent_env, request.cwd)
    _keep_freed_memory()
    tracer = _exec_tracer(request)
    masker = build_masker(request.policy, request.secret_env, correlation_key(request.key))
    for secret in request.credentials:
        masker.add_secret(secret.value, f"credential:{secret.grant}")
    if request.job_token:  # the agent can read the job state file: never show what is in it
        masker.add_secret(request.job_token, "broker-job-token")
    spec = sandbox_spec(
        request.policy,
        mode=effective_mode(request.policy, request.sandbox),
        cwd=request.cwd,
        sessions_dir=request.sessions_dir,
        key_path=request.key_path,
        state_dir=request.state_dir,
        environ=request.secret_env,
    )
    seal_abandoned_sessions(request.sessions_dir, request.key)
    writer = SessionWriter.create(request.sessions_dir)  # holds a lock on its log until sealed
    return _Session(request, writer, masker, tracer, spec).run()


def _resolve_command(name: str, env: Mapping[str, str], cwd: str) -> None:
    if "/" in name:
        target = Path(cwd, name)
        if os.access(target, os.X_OK) and target.is_file():
            return
    elif shutil.which(name, path=env.get("PATH", os.defpath)):
        return
    raise CommandNotFound(
        f"command not found: {name}", hint="check the command name and the PATH the agent gets"
    )


def _keep_freed_memory() -> None:
    """Have glibc's malloc reuse freed buffers instead of returning them to the kernel.

    Output moves as megabyte-sized bytes objects (read, masked, escaped, joined into a line).
    By default glibc serves each from a fresh mmap, or trims the heap when it is freed, so every
    buffer costs page faults and zeroing: measured 2x slower JSON escaping and 10x slower
    copies. A recorder holds a few such buffers at a time, so keeping them costs little memory.
    Elsewhere (another libc) this does nothing.
    """
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's ceiling on 64-bit
    mallopt(_M_TRIM_THRESHOLD, 128 << 20)


def _exec_tracer(request: SessionRequest) -> TracerStatus | None:
    mode = request.policy.capture.exec
    if mode == "off":
        return None
    probe = request.tracer_probe
    status = probe() if probe is not None else probe_strace(request.strace_path)
    if status.available or mode == "best_effort":
        return status
    raise InfrastructureUnavailable(
        f"exec capture is required by the policy, but {status.reason}",
        hint="install strace and allow ptrace, or set `capture: {exec: best_effort}` in the policy",
    )


class _Session:
    def __init__(
        self,
        request: SessionRequest,
        writer: SessionWriter,
        masker: Masker,
        tracer: TracerStatus | None,
        sandbox: SandboxSpec | None = None,
    ) -> None:
        self._req = request
        self._sandbox_spec = sandbox
        self._sandbox: RunningSandbox | None = None
        self._writer = writer
        self._masker = masker
        self._tracer = tracer
        self._streams: dict[str, StreamMasker] = {}
        self._display_ok = {1: True, 2: True}
        self._counts = {"processes": 0, "output_bytes": 0}
        self._last_witness = time.monotonic()
        self._receipts: list[dict[str, Any]] = []
        self._gateways: RunningGateways | None = None
        self._egress: EgressProxy | None = None
        self._egress_env: dict[str, str] = {}
        self._agent_env = dict(request.agent_env)
        self._pending = PendingSpool(writer.path)  # held output, masked: see audit/pending.py

    def run(self) -> SessionOutcome:
        started = time.monotonic()
        try:
            self._start()
            self._start_gateways()
            self._start_egress()
            self._start_sandbox()
            result = self._run_command()
            self._flush_all()
            self._end(result, time.monotonic() - started)
            self._checkpoint()
            manifest = self._writer.seal(
                self._req.key, exit_code=result.exit_status, checkpoints=self._receipts
            )
        except RecordingError as exc:
            self._seal_incomplete(f"recording failed: {exc.message}")
            raise
        except InfrastructureUnavailable as exc:
            self._seal_incomplete(exc.message)
            raise
        except BaseException:
            self._seal_incomplete("airlock stopped before the session ended")
            raise
        finally:
            if self._egress is not None:
                self._egress.close()
            if self._sandbox is not None:
                self._sandbox.close()
            if self._gateways is not None:
                self._gateways.close()
            self._writer.close()
            self._pending.remove()
        return SessionOutcome(
            self._writer.session_id, self._writer.path, result.exit_status, manifest
        )

    def _use_pty(self) -> bool:
        if self._req.use_pty is not None:
            return self._req.use_pty
        mode = self._req.policy.capture.pty
        return mode == "always" or (mode == "auto" and os.isatty(1))

    def _run_command(self) -> RunResult:
        sandbox = self._sandbox
        if sandbox is None or not sandbox.active:
            return self._runner(contained=False).run()
        return run_checked(
            sandbox,
            lambda contained: self._runner(contained=contained),
            record=lambda status: self._writer.append(EventType.SANDBOX_STATUS, status),
            notice=_notice,
        )

    def _runner(self, *, contained: bool) -> ProcessRunner:
        argv, env, fds = self._req.argv, self._agent_env, tuple[int, ...]()
        on_spawn: Callable[[], None] = lambda: None  # noqa: E731
        if contained and self._sandbox is not None:
            argv = tuple(self._sandbox.wrap(list(argv)))
            env, fds = self._sandbox.env, self._sandbox.pass_fds
            on_spawn = self._sandbox.started
        command = Command(argv, env, self._req.cwd, fds)
        return ProcessRunner(
            command,
            use_pty=self._use_pty(),
            tracer=self._tracer,
            on_output=self._on_output,
            on_process=self._on_process,
            on_idle=self._on_idle,
            on_signal=self._on_signal,
            tracer_required=self._req.policy.capture.exec == "required",
            on_spawn=on_spawn,
        )

    def _start(self) -> None:
        req = self._req
        for rule, why in self._masker.weak_literals:
            _notice(f"warning: the secret for {rule} {why}; it will mask that text everywhere")
        self._writer.append(
            EventType.SESSION_START,
            {
                "identity": req.identity.to_dict(),
                "argv": [self._masker.mask_text(a) for a in req.argv],
                "cwd": self._masker.mask_text(req.cwd),
                "airlock_version": __version__,
                "policy": {"source": req.policy_source, "sha256": req.policy.digest()},
                "pty": self._use_pty(),
                "mask": {
                    "engine": self._masker.engine_name,
                    "literals": self._masker.literal_count,
                    "correlate": req.policy.mask.correlate,
                    "weak": [rule for rule, _ in self._masker.weak_literals],
                },
                "env_removed": list(req.env_removed),
            },
        )
        for secret in req.credentials:
            self._writer.append(
                EventType.CREDENTIAL_ISSUED,
                {
                    "grant": secret.grant,
                    "lease_id": secret.lease_id,
                    "name": secret.name,
                    "sha256": hashlib.sha256(secret.value.encode()).hexdigest(),
                },
            )
        tracer = self._tracer
        self._writer.append(
            EventType.CAPTURE,
            {
                "exec": req.policy.capture.exec,
                "tracer": tracer.name if tracer else "none",
                "active": bool(tracer and tracer.available),
                "detail": tracer.reason if tracer else "exec capture is off in the policy",
            },
        )

    def _start_gateways(self) -> None:
        """Held mode: gateways get the credentials, the agent gets addresses and tickets."""
        policy = self._req.policy
        if not policy.gateways:
            return
        from airlock.gateway.runtime import held_variables, start_gateways

        grant_values: dict[str, dict[str, str]] = {}
        for secret in self._req.credentials:
            grant_values.setdefault(secret.grant, {})[secret.name] = secret.value
        used = {getattr(g.credential, "grant", None) for g in policy.gateways}
        held = held_variables(policy) | {
            name for grant in used if grant for name in grant_values.get(grant, {})
        }
        self._agent_env = {k: v for k, v in self._agent_env.items() if k not in held}
        self._gateways = start_gateways(
            policy,
            session_id=self._writer.session_id,
            masker=self._masker,
            record=self._writer.append,
            approve=self._approver(),
            environ=self._req.secret_env,
            grant_values=grant_values,
        )
        self._agent_env.update(self._gateways.env)
        for gateway in self._gateways.described:
            self._writer.append(EventType.GATEWAY_STARTED, {**gateway, "withheld": sorted(held)})
            _notice(f"gateway {gateway['name']} ({gateway['kind']}) at {gateway['address']}")

    def _start_egress(self) -> None:
        """The policy's network: section → the egress proxy, and the agent's proxy variables."""
        network = self._req.policy.network
        if network is None:
            return
        from airlock.egress import proxy_environment, start_egress_proxy

        mask = self._masker.mask_text

        def record(kind: str, data: Mapping[str, Any]) -> None:
            masked = {k: mask(v) if isinstance(v, str) else v for k, v in data.items()}
            self._writer.append(kind, masked)
            if masked.get("outcome") == "denied":  # on stderr too: the CI log shows it live
                where = f"{masked.get('host')}:{masked.get('port')}"
                _notice(f"egress denied {where} (rule {masked.get('rule_id')})")

        asks = any(rule.action == "require_approval" for rule in network.allow)
        self._egress = start_egress_proxy(
            network, record=record, approve=self._approver() if asks else None
        )
        described = self._gateways.described if self._gateways is not None else []
        hosts = [urlsplit("//" + str(g["address"]).split("://")[-1]).hostname for g in described]
        self._egress_env = proxy_environment(self._egress, [h or "" for h in hosts])
        self._agent_env.update(self._egress_env)
        self._writer.append(
            EventType.GATEWAY_STARTED,
            {
                "name": "egress",
                "kind": "egress",
                "address": self._egress.url,
                "allowlist": self._egress.rules.allowlist(),
            },
        )
        _notice(f"egress proxy at {self._egress.url} (network: default deny)")

    def _start_sandbox(self) -> None:
        """Prepare the sandbox (its self-check runs inside it, before the agent: see
        run_checked); no bwrap with ``required``: exit 85 here, recorded."""
        spec = self._sandbox_spec
        if spec is None:
            return
        gateways = self._gateways
        egress = self._egress
        try:
            self._sandbox = start_for_session(
                spec,
                agent_env=self._agent_env,
                gateways=gateways.described if gateways else [],
                gateway_env=gateways.env if gateways else {},
                egress=(egress.host, egress.port) if egress is not None else None,
                passed=[secret.name for secret in self._req.credentials],  # direct mode
            )
        except SandboxUnavailable as exc:
            self._writer.append(EventType.SANDBOX_STATUS, exc.status)
            raise
        if not self._sandbox.active:
            self._writer.append(EventType.SANDBOX_STATUS, self._sandbox.status)
            _notice(f"sandbox downgraded (best_effort): {self._sandbox.status.get('reason')}")

    def _approver(self) -> Approve:
        """The approval backend the policy names, bound to this session's identity."""
        from airlock.gate.interface import approver

        settings = self._req.policy.approvals
        identity = self._req.identity
        backend = _approval_backend(self._req, self._writer.append, own_pty=self._use_pty())
        return approver(
            backend,
            float(settings.timeout),
            repository=identity.repository,
            commit=identity.sha,
            run_id=identity.run_id,
            session_id=self._writer.session_id,
        )

    def _on_signal(self, name: str) -> None:
        self._writer.append(EventType.SIGNAL, {"forwarded": name})

    def _on_output(self, stream: str, data: bytes) -> None:
        masker = self._streams.get(stream)
        if masker is None:
            masker = self._streams[stream] = self._masker.stream()
        shown = masker.feed(data)
        self._pending.update({name: m.pending() for name, m in self._streams.items()})
        self._emit(stream, shown)

    def _on_idle(self) -> None:
        for stream, masker in self._streams.items():
            self._emit(stream, masker.flush_idle(time.monotonic()))
        self._pending.update({name: m.pending() for name, m in self._streams.items()})
        if time.monotonic() - self._last_witness >= self._req.witness_interval:
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Have the witness sign the current chain head, then record its receipt."""
        witness = self._req.witness
        if witness is None or self._writer.seq == 0:
            return
        self._last_witness = time.monotonic()
        seq, head = self._writer.last_line()
        try:
            receipt = witness(self._writer.session_id, seq, head)
        except AirlockError as exc:  # fail closed: a session the witness cannot see must stop
            raise InfrastructureUnavailable(
                f"the broker could not witness checkpoint {seq}: {exc.message}",
                hint="check the broker; a session without witnessed checkpoints is not trusted",
            ) from exc
        entry = {**dict(receipt), "seq": seq, "head": head}
        entry.pop("session_id", None)
        self._receipts.append(entry)
        self._writer.append(EventType.CHECKPOINT, entry)

    def _flush_all(self) -> None:
        for stream, masker in self._streams.items():
            self._emit(stream, masker.flush())

    def _emit(self, stream: str, data: bytes) -> None:
        if not data:
            return
        # Recorded first: if the log cannot take it, it is not shown either (fail closed). The
        # writer's thread writes the line, then shows it, while this one reads and masks more.
        fd = _TERMINAL_FD[stream]
        self._writer.append_later(
            EventType.OUTPUT, {"stream": stream, **_encode(data)}, lambda: self._show(fd, data)
        )
        self._counts["output_bytes"] += len(data)

    def _show(self, fd: int, data: bytes) -> None:
        if not self._display_ok[fd]:
            return
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError:  # the terminal or pipe went away: keep recording, stop showing
            self._display_ok[fd] = False

    def _on_process(self, event: ProcessExec | ProcessExit) -> None:
        if isinstance(event, ProcessExec):
            self._counts["processes"] += 1
            self._writer.append(
                EventType.PROCESS_EXEC,
                {
                    "pid": event.pid,
                    "ppid": event.ppid,
                    **_masked_process_fields(self._masker, event),
                    "at": event.ts,
                    **({"truncated": True} if event.truncated else {}),
                },
            )
        else:
            data: dict[str, Any] = {"pid": event.pid, "at": event.ts}
            data.update(
                {"status": event.status} if event.signal is None else {"signal": event.signal}
            )
            self._writer.append(EventType.PROCESS_EXIT, data)

    def _end(self, result: RunResult, duration: float) -> None:
        self._writer.append(
            EventType.SESSION_END,
            {
                "exit_status": result.exit_status,
                "signal": result.signal,
                "duration_seconds": round(duration, 6),
                "signals_forwarded": result.forwarded,
                "trace_unparsed_lines": result.trace_unparsed,
                "leftovers_stopped": result.leftovers_stopped,
                "leftovers_remaining": result.leftovers_remaining,
                "tracer_lost": result.tracer_lost,
                **self._counts,
            },
        )

    def _seal_incomplete(self, reason: str) -> None:
        with contextlib.suppress(AirlockError, OSError):
            self._writer.seal(
                self._req.key,
                exit_code=None,
                status="incomplete",
                reason=reason,
                checkpoints=self._receipts,
            )


def _masked_process_fields(masker: Masker, event: ProcessExec) -> dict[str, Any]:
    """Path, argv and cwd of an exec, masked; a value strace cut short is masked as a stream
    that ends at the cut (the prefix of a secret the cut went through is masked too)."""

    def mask(text: str, index: int) -> str:
        return masker.mask_cut_text(text) if index in event.cut else masker.mask_text(text)

    return {
        "path": mask(event.path, -1),
        "argv": [mask(arg, i) for i, arg in enumerate(event.argv)],
        "cwd": masker.mask_text(event.cwd) if event.cwd is not None else None,
    }


def _approval_backend(request: SessionRequest, record: Record, *, own_pty: bool) -> ApprovalBackend:
    from airlock.jobs.approvals import BackendSettings, approval_backend

    policy = request.policy.approvals
    kind = policy.forge if policy.backend == "broker" else policy.backend
    settings = BackendSettings(
        timeout=float(policy.timeout),
        directory=Path(policy.dir) if policy.backend == "file" else None,
        broker_url=request.broker_url,
        job_token=request.job_token,
        agent_shares_terminal=not own_pty,  # without its own pty it can TIOCSTI ours
    )
    return approval_backend(kind, settings, key=request.key, record=record)


def _notice(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"airlock: {text}\n".encode())


def _encode(data: bytes) -> dict[str, str]:
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(data).decode("ascii")}


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
