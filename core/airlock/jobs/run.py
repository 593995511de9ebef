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
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airlock.audit import SessionWriter
from airlock.audit.pending import PendingSpool
from airlock.capture.exectrace import ProcessExec, ProcessExit
from airlock.capture.runner import RunResult
from airlock.capture.tracer import TracerStatus, probe_strace
from airlock.errors import AirlockError, InfrastructureUnavailable, RecordingError, UsageError
from airlock.events import EventType
from airlock.jobs._parts import SessionParts, notice
from airlock.jobs.request import (
    CommandNotFound,
    IssuedSecret,
    SessionOutcome,
    SessionRequest,
    Witness,
    build_masker,
    correlation_key,
    restore_abandoned_checkouts,
    seal_abandoned_sessions,
)
from airlock.jobs.sandboxed import effective_mode, sandbox_spec
from airlock.mask import Masker, StreamMasker
from airlock.sandbox import RunningSandbox, SandboxSpec
from airlock.sandbox.checkout import CheckoutJournal, HiddenCredentials

if TYPE_CHECKING:  # gateways and approvals load only when the policy declares gateways
    from airlock.egress import EgressProxy
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
        policy_file=request.policy_source,
    )
    seal_abandoned_sessions(request.sessions_dir, request.key)
    if request.state_dir is not None:
        restore_abandoned_checkouts(request.state_dir, notice)
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


class _Session(SessionParts):
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
        self._hidden_git: list[HiddenCredentials] = []
        self._git_journal: CheckoutJournal | None = None

    def run(self) -> SessionOutcome:
        started = time.monotonic()
        try:
            self._start()
            self._start_gateways()
            self._start_egress()
            self._start_sandbox()
            result = self._run_command()
            self._close_recorders()  # what they record as they close is sealed with the rest
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
            self._restore_checkout_credentials()  # the agent has ended: back for later steps
            if self._gateways is not None:
                self._gateways.close()
            self._writer.close()
            self._pending.remove()
        return SessionOutcome(
            self._writer.session_id, self._writer.path, result.exit_status, manifest
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
                    **event.exec_fields(self._masker.mask_text),
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

    def _close_recorders(self) -> None:
        """Close the egress proxy (open tunnels get their ``net.connect``) and the gateways
        (pending holds get ``approval.cancelled``, requests in flight their outcome) while the
        log is still open: closing them after the seal would drop those last events."""
        if self._egress is not None:
            self._egress.close()
        if self._gateways is not None:
            self._gateways.close()

    def _seal_incomplete(self, reason: str) -> None:
        with contextlib.suppress(Exception):
            self._close_recorders()
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


def _encode(data: bytes) -> dict[str, str]:
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(data).decode("ascii")}
