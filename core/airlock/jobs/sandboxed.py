"""The sandbox part of ``airlock run``: which mode applies, the compiled spec, and starting it
with the session's gateways bridged in. docs/sandbox.md describes what the agent sees."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airlock.errors import UsageError
from airlock.policy.default import SANDBOX_MODES

if TYPE_CHECKING:  # a run without a policy file or sandbox loads neither (policy.default)
    from airlock.capture.runner import ProcessRunner, RunResult
    from airlock.policy import Policy
    from airlock.sandbox import RunningSandbox, SandboxSpec

__all__ = ["effective_mode", "run_checked", "sandbox_spec", "start_for_session"]

_PROXY_VARS = ("https_proxy", "http_proxy", "no_proxy", "all_proxy")
# Only listeners on the host's loopback are bridged: inside, the same 127.0.0.1:PORT reaches
# them. A central gateway elsewhere is not reachable from the sandbox (its network is loopback).
_LOOPBACK = ("127.0.0.1", "localhost")


def effective_mode(policy: Policy, override: str | None) -> str:
    """``--sandbox`` / AIRLOCK_SANDBOX when given, else the policy's ``sandbox.mode``."""
    if override is None or override == "":
        return policy.sandbox.mode
    if override not in SANDBOX_MODES:
        raise UsageError(
            f"unknown sandbox mode {override!r}",
            hint="use --sandbox required, best_effort or off (or AIRLOCK_SANDBOX)",
        )
    return override


def sandbox_spec(
    policy: Policy,
    *,
    mode: str,
    cwd: str,
    sessions_dir: Path,
    key_path: Path | None,
    state_dir: Path | None,
    environ: Mapping[str, str],
    policy_file: str | None = None,
) -> SandboxSpec | None:
    """The compiled sandbox, or None when it is off. Bad paths raise ConfigError (exit 80).

    ``policy_file`` stays read-only inside: it is in the checkout, and the job's next session
    reads it."""
    if mode == "off":
        return None
    from airlock.sandbox import compile_spec, protected_paths

    home = environ.get("HOME") or str(Path.home())
    protected = protected_paths(
        sessions_dir=Path(cwd, sessions_dir), key_path=key_path, state_dir=state_dir, home=home
    ) + tuple(str(p) for p in _approval_dirs(policy, cwd))
    pinned = [str(Path(cwd, policy_file))] if policy_file else []
    return compile_spec(
        policy.sandbox,
        mode=mode,
        workspace=cwd,
        home=home,
        protected=protected,
        environ=environ,
        pinned=pinned,
    )


def _approval_dirs(policy: Policy, cwd: str) -> list[Path]:
    """The file backend's directory: a decision file in it approves, so the agent must not
    reach it. Made now, before the agent starts: the sandbox covers only what exists, and a
    directory the agent made first would be the agent's."""
    if policy.approvals.backend != "file":
        return []
    directory = Path(cwd, policy.approvals.dir)
    directory.mkdir(parents=True, exist_ok=True)
    return [directory]


def start_for_session(
    spec: SandboxSpec,
    *,
    agent_env: Mapping[str, str],
    gateways: list[dict[str, Any]],
    gateway_env: Mapping[str, str],
    egress: tuple[str, int] | None = None,
    passed: Iterable[str] = (),
) -> RunningSandbox:
    """Start the sandbox with each gateway's listener, and the egress proxy, reachable inside at
    the same 127.0.0.1 port; the agent's proxy variables (set by the egress step) pass in."""
    endpoints = [_endpoint(str(g["address"])) for g in gateways if g.get("address")]
    extra = {name: agent_env[name] for name in passed if name in agent_env}  # not held ones
    extra.update(gateway_env)
    if egress is not None:
        endpoints.append(egress)
        extra.update({k: v for k, v in agent_env.items() if k.lower() in _PROXY_VARS})
    from airlock.sandbox import start_sandbox as _start

    return _start(
        spec,
        endpoints=[e for e in endpoints if e[0] in _LOOPBACK],
        agent_env=agent_env,
        extra_env=extra,
        proxy_port=egress[1] if egress is not None else None,
    )


def run_checked(
    sandbox: RunningSandbox,
    runner: Callable[[bool], ProcessRunner],
    *,
    record: Callable[[dict[str, Any]], object],
    notice: Callable[[str], None],
) -> RunResult:
    """Run the agent in ``sandbox`` (``runner(True)``, which must call ``sandbox.started`` once
    it has spawned): the relay runs the self-check first and the agent starts only once this
    side has recorded the status and said go. A failed check with ``required`` raises
    SandboxUnavailable (exit 85; the agent never ran); with ``best_effort`` the agent then runs
    uncontained (``runner(False)``) and the status says why."""
    errors: list[BaseException] = []

    def check() -> None:
        try:
            sandbox.check(record)
        except BaseException as exc:  # handed to the session's thread below
            errors.append(exc)

    thread = threading.Thread(target=check, name="airlock-sandbox-check", daemon=True)
    thread.start()
    try:
        result = runner(True).run()
    finally:
        sandbox.started()  # so the check sees EOF if the sandbox never started
        thread.join()
    if errors:
        raise errors[0]
    if sandbox.failure is None:
        return result
    if sandbox.status["mode"] == "required":
        raise sandbox.unavailable()
    notice(f"sandbox downgraded (best_effort): {sandbox.failure}")
    return runner(False).run()


def _endpoint(address: str) -> tuple[str, int]:
    """``host:port`` (PostgreSQL) or a URL (HTTP, model-API and MCP gateways) → (host, port)."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"gateway address without host and port: {address!r}")
    return parts.hostname, parts.port
