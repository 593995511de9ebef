"""Start a sandbox for one session: check it from inside, then wrap the agent's command.

:func:`start_sandbox` bridges the host endpoints (gateways, egress proxy), runs the self-check
probes in a sandbox built exactly like the agent's, and returns a :class:`RunningSandbox` whose
``status`` is the ``sandbox.status`` event. With ``required``, a missing bwrap, a sandbox that
cannot start (user namespaces off) or any failed probe raises
:class:`~airlock.errors.InfrastructureUnavailable` (exit 85) before the agent starts; with
``best_effort`` the agent runs uncontained and the status says why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airlock.errors import InfrastructureUnavailable
from airlock.policy.model import env_pattern_matches
from airlock.sandbox.bridge import Bridge
from airlock.sandbox.bwrap import BwrapCommand, find_bwrap, probed_paths
from airlock.sandbox.seccomp import build_filter, host_arch
from airlock.sandbox.spec import SandboxSpec

__all__ = [
    "USERNS_HINT",
    "EarlyCheck",
    "RunningSandbox",
    "SandboxUnavailable",
    "begin_self_check",
    "sandbox_env",
    "start_sandbox",
]

_PROBE_TIMEOUT = 30.0
_TMP = "/tmp"  # noqa: S108 (the sandbox's own fresh tmpfs)
USERNS_HINT = (
    "install bubblewrap (apt-get install bubblewrap) and allow unprivileged user namespaces: on "
    "Ubuntu 24.04 `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`; on older "
    "kernels `kernel.unprivileged_userns_clone=1`; GitLab Docker executors need "
    "`--security-opt seccomp=unconfined --security-opt apparmor=unconfined` (docs/sandbox.md). "
    "Or run with `--sandbox best_effort` to record the downgrade instead"
)


class SandboxUnavailable(InfrastructureUnavailable):
    """``required`` and the sandbox cannot run: ``status`` is the ``sandbox.status`` to record."""

    def __init__(self, message: str, *, status: dict[str, Any], hint: str) -> None:
        super().__init__(message, hint=hint)
        self.status = status


@dataclass
class RunningSandbox:
    """A checked sandbox: wrap the agent's command with :meth:`wrap`, then :meth:`close`."""

    status: dict[str, Any]
    env: dict[str, str]
    command: BwrapCommand | None = None
    bridge: Bridge | None = None
    pass_fds: tuple[int, ...] = ()
    _fds: list[int] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.command is not None

    def wrap(self, argv: list[str]) -> list[str]:
        if self.command is None:
            return argv
        pairs = self.bridge.pairs if self.bridge else []
        return self.command.relay_argv(pairs, argv)

    def close(self) -> None:
        if self.bridge is not None:
            self.bridge.close()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


def sandbox_env(spec: SandboxSpec, agent_env: Mapping[str, str]) -> dict[str, str]:
    """Only what the policy passes, plus HOME/TMPDIR/USER for the sandbox's view."""
    env = {
        k: v
        for k, v in agent_env.items()
        if any(env_pattern_matches(pattern, k) for pattern in spec.env_pass)
    }
    env.update({"HOME": spec.home, "TMPDIR": _TMP, "USER": "agent", "LOGNAME": "agent"})
    return env


def start_sandbox(
    spec: SandboxSpec,
    *,
    endpoints: list[tuple[str, int]],
    agent_env: Mapping[str, str],
    extra_env: Mapping[str, str] | None = None,
    proxy_port: int | None = None,
    early: EarlyCheck | None = None,
) -> RunningSandbox:
    """Bridge ``endpoints``, self-check, and return the sandbox (or raise, with ``required``).

    ``early`` is a self-check already started (:func:`begin_self_check`); without a proxy to
    probe, its result is used instead of running the probes again.
    """
    env = {**sandbox_env(spec, agent_env), **(extra_env or {})}
    status: dict[str, Any] = {"mode": spec.mode, "active": False, "workspace": spec.workspace}
    bwrap = find_bwrap()
    if bwrap is None:
        return _downgrade(spec, status, agent_env, "bubblewrap (bwrap) is not installed")
    arch = host_arch()
    if arch is None:
        return _downgrade(spec, status, agent_env, "no seccomp filter for this CPU architecture")
    program = build_filter(arch)
    bridge = Bridge(endpoints)
    sandbox = RunningSandbox(status, env, bridge=bridge)
    try:
        command = BwrapCommand(bwrap, spec, None, bridge.dir)
        if early is not None and proxy_port is None:
            probes, error = early.result()
        else:
            probes, error = _self_check(command, program, bridge.pairs, env, proxy_port)
        status.update(
            {
                "bwrap": bwrap,
                "uid": spec.uid,
                "seccomp": {"arch": arch.name, "instructions": len(program) // 8},
                "bridged_ports": [port for port, _ in bridge.pairs],
                "hidden": list(spec.hidden),
                "env": sorted(env),
                "probes": probes,
            }
        )
        failed = [p["id"] for p in probes if not p["ok"]]
        if error or failed:
            reason = error or f"self-check failed: {', '.join(failed)}"
            sandbox.close()
            return _downgrade(spec, status, agent_env, reason)
        fd = _memfd(program)
        sandbox._fds.append(fd)
        sandbox.command = dataclasses.replace(command, seccomp_fd=fd)
        sandbox.pass_fds = (fd,)
        status["active"] = True
        return sandbox
    except BaseException:
        sandbox.close()
        raise


def _downgrade(
    spec: SandboxSpec, status: dict[str, Any], agent_env: Mapping[str, str], reason: str
) -> RunningSandbox:
    status.update({"active": False, "reason": reason})
    if spec.mode == "required":
        raise SandboxUnavailable(
            f"the sandbox is required but cannot run: {reason}", status=status, hint=USERNS_HINT
        )
    status["downgraded"] = True
    return RunningSandbox(status, dict(agent_env))


def _memfd(program: bytes) -> int:
    fd = os.memfd_create("airlock-seccomp", 0)  # inheritable on purpose: bwrap reads it
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class EarlyCheck:
    """The self-check probes, run on a thread while the session starts its other parts."""

    def __init__(self, bwrap: str, spec: SandboxSpec, program: bytes) -> None:
        command = BwrapCommand(bwrap, spec, None, None)
        env = {"PATH": "/usr/bin:/bin"}
        self._outcome: list[tuple[list[dict[str, Any]], str | None]] = []

        def check() -> None:
            self._outcome.append(_self_check(command, program, [], env, None))

        self._thread = threading.Thread(target=check, name="airlock-sandbox-check", daemon=True)
        self._thread.start()

    def result(self) -> tuple[list[dict[str, Any]], str | None]:
        self._thread.join()
        return self._outcome[0] if self._outcome else ([], "the self-check did not finish")


def begin_self_check(spec: SandboxSpec) -> EarlyCheck | None:
    """Start the probes now (None when bwrap or a filter is missing: start_sandbox says so)."""
    bwrap, arch = find_bwrap(), host_arch()
    if bwrap is None or arch is None:
        return None
    return EarlyCheck(bwrap, spec, build_filter(arch))


def _self_check(
    command: BwrapCommand,
    program: bytes,
    pairs: list[tuple[int, str]],
    env: Mapping[str, str],
    proxy_port: int | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Run the probes in a sandbox like the agent's; check the host canaries heard nothing."""
    with _Canaries() as canaries:
        config = {
            "hidden": probed_paths(command.spec),
            "canary_tcp": ["127.0.0.1", canaries.tcp_port],
            "canary_udp": ["127.0.0.1", canaries.udp_port],
            "proxy": proxy_port,
        }
        fd = _memfd(program)
        try:
            argv = dataclasses.replace(command, seccomp_fd=fd).probe_argv(json.dumps(config), pairs)
            proc = subprocess.run(
                argv,
                env=dict(env),
                pass_fds=(fd,),
                capture_output=True,
                timeout=_PROBE_TIMEOUT,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return [], f"bwrap could not run: {exc}"
        finally:
            os.close(fd)
        lines = proc.stdout.decode(errors="replace").strip().splitlines()
        if proc.returncode != 0 or not lines:
            why = proc.stderr.decode(errors="replace").strip().splitlines()
            return [], f"bwrap could not start the sandbox: {why[-1] if why else proc.returncode}"
        probes: list[dict[str, Any]] = json.loads(lines[-1])
        heard = canaries.heard()
    for probe in probes:
        if probe["id"] in heard:
            probe.update({"ok": False, "detail": probe["detail"] + "; the host canary heard it"})
    return probes, None


class _Canaries:
    """Host listeners on 127.0.0.1 that the probes try to reach: they must hear nothing."""

    def __enter__(self) -> _Canaries:
        self._tcp = socket.create_server(("127.0.0.1", 0))
        self._tcp.setblocking(False)
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind(("127.0.0.1", 0))
        self._udp.setblocking(False)
        self.tcp_port = self._tcp.getsockname()[1]
        self.udp_port = self._udp.getsockname()[1]
        return self

    def heard(self) -> set[str]:
        heard = set()
        with contextlib.suppress(BlockingIOError):
            self._tcp.accept()[0].close()
            heard.add("net.tcp_out")
        with contextlib.suppress(BlockingIOError):
            self._udp.recv(64)
            heard.add("net.udp_out")
        return heard

    def __exit__(self, *_exc: object) -> None:
        self._tcp.close()
        self._udp.close()
