"""The sandbox part of ``airlock run``: which mode applies, the compiled spec, and starting it
with the session's gateways bridged in. docs/sandbox.md describes what the agent sees."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airlock.errors import UsageError
from airlock.policy import Policy
from airlock.policy.sandbox import SANDBOX_MODES
from airlock.sandbox import RunningSandbox, SandboxSpec, compile_spec, protected_paths
from airlock.sandbox import start_sandbox as _start

__all__ = ["effective_mode", "sandbox_spec", "start_for_session"]


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
) -> SandboxSpec | None:
    """The compiled sandbox, or None when it is off. Bad paths raise ConfigError (exit 80)."""
    if mode == "off":
        return None
    home = environ.get("HOME") or str(Path.home())
    protected = protected_paths(
        sessions_dir=Path(cwd, sessions_dir), key_path=key_path, state_dir=state_dir, home=home
    )
    return compile_spec(
        policy.sandbox, mode=mode, workspace=cwd, home=home, protected=protected, environ=environ
    )


def start_for_session(
    spec: SandboxSpec,
    *,
    agent_env: Mapping[str, str],
    gateways: list[dict[str, Any]],
    gateway_env: Mapping[str, str],
) -> RunningSandbox:
    """Start the sandbox with each gateway's listener reachable inside at the same address."""
    endpoints = [_endpoint(str(g["address"])) for g in gateways if g.get("address")]
    return _start(spec, endpoints=endpoints, agent_env=agent_env, extra_env=gateway_env)


def _endpoint(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)
