"""The parts of a session that start before its command: the first events, the gateways
(held mode), the egress proxy, the sandbox; the approval backend they share; and running the
command, contained or not. A mixin of :class:`airlock.jobs.run._Session`, cut out along that
seam (the session's state is declared below)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airlock import __version__
from airlock.audit import SessionWriter
from airlock.capture.exectrace import ProcessExec, ProcessExit
from airlock.capture.runner import Command, ProcessRunner, RunResult
from airlock.capture.tracer import TracerStatus
from airlock.errors import InfrastructureUnavailable
from airlock.events import EventType
from airlock.jobs.request import SessionRequest
from airlock.jobs.sandboxed import run_checked, start_for_session
from airlock.mask import Masker
from airlock.sandbox import RunningSandbox, SandboxSpec, SandboxUnavailable
from airlock.sandbox.checkout import (
    CheckoutJournal,
    HiddenCredentials,
    hide_checkout_credentials,
)

if TYPE_CHECKING:  # gateways and approvals load only when the policy declares gateways
    from airlock.egress import EgressProxy
    from airlock.gate import ApprovalBackend, Approve
    from airlock.gate.interface import Record
    from airlock.gateway.runtime import RunningGateways

__all__: list[str] = []


class SessionParts:
    _req: SessionRequest
    _writer: SessionWriter
    _masker: Masker
    _tracer: TracerStatus | None
    _sandbox_spec: SandboxSpec | None
    _sandbox: RunningSandbox | None
    _gateways: RunningGateways | None
    _egress: EgressProxy | None
    _egress_env: dict[str, str]
    _agent_env: dict[str, str]
    _hidden_git: list[HiddenCredentials]
    _git_journal: CheckoutJournal | None

    def _use_pty(self) -> bool:
        if self._req.use_pty is not None:
            return self._req.use_pty
        mode = self._req.policy.capture.pty
        return mode == "always" or (mode == "auto" and os.isatty(1))

    def _on_output(self, stream: str, data: bytes) -> None:
        raise NotImplementedError

    def _on_process(self, event: ProcessExec | ProcessExit) -> None:
        raise NotImplementedError

    def _on_idle(self) -> None:
        raise NotImplementedError

    def _on_signal(self, name: str) -> None:
        raise NotImplementedError

    def _run_command(self) -> RunResult:
        sandbox = self._sandbox
        if sandbox is None or not sandbox.active:
            return self._runner(contained=False).run()
        return run_checked(
            sandbox,
            lambda contained: self._runner(contained=contained),
            record=lambda status: self._writer.append(EventType.SANDBOX_STATUS, status),
            notice=notice,
        )

    def _runner(self, *, contained: bool) -> ProcessRunner:
        argv, env, fds = self._req.argv, self._agent_env, tuple[int, ...]()
        on_spawn: Callable[[], None] = lambda: None  # noqa: E731
        if contained and self._sandbox is not None:
            argv = tuple(self._sandbox.wrap(list(argv), tty=self._use_pty()))
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
            notice(f"warning: the secret for {rule} {why}; it will mask that text everywhere")
        self._writer.append(
            EventType.SESSION_START,
            {
                "identity": req.identity.to_dict(),
                "argv": [self._masker.mask_text(a) for a in req.argv],
                "cwd": self._masker.mask_text(req.cwd),
                "airlock_version": __version__,
                "policy": {
                    "source": req.policy_source,
                    "sha256": req.policy.digest(),
                    **(req.policy_origin or {}),
                },
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
            notice(f"gateway {gateway['name']} ({gateway['kind']}) at {gateway['address']}")

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
                notice(f"egress denied {where} (rule {masked.get('rule_id')})")

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
        notice(f"egress proxy at {self._egress.url} (network: default deny)")

    def _start_sandbox(self) -> None:
        """Prepare the sandbox (its self-check runs inside it, before the agent: see
        run_checked); no bwrap with ``required``: exit 85 here, recorded."""
        spec = self._sandbox_spec
        if spec is None:
            return
        self._hide_checkout_credentials(spec)
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
            notice(f"sandbox downgraded (best_effort): {self._sandbox.status.get('reason')}")

    def _hide_checkout_credentials(self, spec: SandboxSpec) -> None:
        """The job's token that actions/checkout or GitLab Runner left in the checkout's git
        config: out while the agent runs, back when the sandbox has ended (run's finally), or
        by the job's next run or finalize when this one is killed (the journal)."""
        try:
            self._hidden_git, self._git_journal = hide_checkout_credentials(
                spec.workspace, self._req.state_dir
            )
        except OSError as exc:
            raise InfrastructureUnavailable(
                f"cannot take the job's git credentials out of the checkout: {exc.strerror}",
                hint="check that the checkout's .git/config is writable",
            ) from exc
        if not self._hidden_git:
            return
        for hidden in self._hidden_git:
            for value in hidden.secrets:
                self._masker.add_secret(value, "checkout-credential")
        count = sum(len(h.headers) + len(h.urls) for h in self._hidden_git)
        notice(f"{count} git credential(s) in the checkout hidden from the agent until it ends")

    def _restore_checkout_credentials(self) -> None:
        hidden, self._hidden_git = self._hidden_git, []
        if not all([h.restore() for h in hidden]):
            notice("warning: .git changed shape: some of the job's git credentials are gone")
        journal, self._git_journal = self._git_journal, None
        if journal is not None:
            journal.done()

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


def notice(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"airlock: {text}\n".encode())
