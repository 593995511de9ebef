"""Start a sandbox for one session; its self-check runs inside the agent's own sandbox.

:func:`start_sandbox` bridges the host endpoints (gateways, egress proxy) and returns a
:class:`RunningSandbox`. The command :meth:`RunningSandbox.wrap` builds starts the in-sandbox
relay (``_relay.py``), which runs the self-check probes first, writes their results to a pipe
and waits: the agent is only exec'd once :meth:`RunningSandbox.check` (host side) has read the
results, merged what the host canaries heard, and said go. Nothing of the agent runs before
that, so with ``required`` a failed probe still means the agent never started (exit 85).

A missing bwrap or seccomp filter is known before anything starts: with ``required`` that raises
:class:`SandboxUnavailable`; with ``best_effort`` the agent runs uncontained and the status says
why. A sandbox that cannot start (user namespaces off) or a failed probe is known from the
check: the caller then fails closed or, with ``best_effort``, runs the agent uncontained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import select
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from airlock.errors import InfrastructureUnavailable
from airlock.policy.default import env_pattern_matches
from airlock.sandbox.bridge import Bridge
from airlock.sandbox.bwrap import BRIDGE_DIR, BwrapCommand, find_bwrap, probed_paths
from airlock.sandbox.seccomp import build_filter, host_arch
from airlock.sandbox.spec import SandboxSpec

__all__ = [
    "PROBE_HINT",
    "USERNS_HINT",
    "RunningSandbox",
    "SandboxUnavailable",
    "sandbox_env",
    "start_sandbox",
]

_PROBE_TIMEOUT = 30.0
_TMP = "/tmp"  # noqa: S108 (the sandbox's own fresh tmpfs)
_GO = b"1"
USERNS_HINT = (
    "install bubblewrap (apt-get install bubblewrap) and allow unprivileged user namespaces: on "
    "Ubuntu 24.04 `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`; on older "
    "kernels `kernel.unprivileged_userns_clone=1`; GitLab Docker executors need "
    "`--security-opt seccomp=unconfined --security-opt apparmor=unconfined` (docs/sandbox.md). "
    "Or run with `--sandbox best_effort` to record the downgrade instead"
)
PROBE_HINT = (
    "a wall of the sandbox did not hold: the sandbox.status event (`airlock show`) names the "
    "probe and what it saw; fix the policy's sandbox section or the runner (docs/sandbox.md), "
    "or run with `--sandbox best_effort` to record the downgrade instead"
)


class SandboxUnavailable(InfrastructureUnavailable):
    """``required`` and the sandbox cannot run: ``status`` is the ``sandbox.status`` to record."""

    def __init__(self, message: str, *, status: dict[str, Any], hint: str) -> None:
        super().__init__(message, hint=hint)
        self.status = status


@dataclass
class RunningSandbox:
    """A sandbox ready to start: run :meth:`wrap`'s argv with :attr:`pass_fds`, call
    :meth:`started` once it is spawned, then :meth:`check` (the agent waits for it), then
    :meth:`close` when the session ends."""

    status: dict[str, Any]
    env: dict[str, str]
    command: BwrapCommand | None = None
    bridge: Bridge | None = None
    pass_fds: tuple[int, ...] = ()
    _fds: list[int] = field(default_factory=list)
    _check: _SelfCheck | None = None

    @property
    def active(self) -> bool:
        return self.command is not None

    @property
    def failure(self) -> str | None:
        """Why the check refused the sandbox (None: it passed, or has not run)."""
        return self._check.failure if self._check is not None else None

    def wrap(self, argv: list[str], *, tty: bool = False) -> list[str]:
        """The sandboxed argv; ``tty``: its stdin will be the agent's own pty (/dev/tty)."""
        if self.command is None:
            return argv
        pairs = self.bridge.pairs if self.bridge else []
        check = self._check.relay_options() if self._check is not None else []
        command = dataclasses.replace(self.command, tty=tty)
        return command.relay_argv(pairs, argv, check)

    def started(self) -> None:
        """The sandbox process exists: drop this process's copies of its ends of the pipes."""
        if self._check is not None:
            self._check.started()

    def check(
        self, record: Callable[[dict[str, Any]], object], timeout: float = _PROBE_TIMEOUT
    ) -> bool:
        """Wait for the probes' results, ``record`` the status, then let the agent start (True)
        or refuse it (False: the relay exits 85 without running the agent). The status is
        recorded before the agent may start; if recording fails, the agent never starts."""
        check = self._check
        if check is None:
            return self.active
        try:
            probes, error = check.results(timeout)
            self.status["probes"] = probes
            failed = [p["id"] for p in probes if not p["ok"]]
            if error or failed:
                check.failure = error or f"self-check failed: {', '.join(failed)}"
                self.status.update({"active": False, "reason": check.failure})
                if self.status["mode"] != "required":
                    self.status["downgraded"] = True
            record(self.status)
        except BaseException:
            check.failure = check.failure or "the self-check could not be recorded"
            check.release(go=False)
            raise
        check.release(go=check.failure is None)
        return check.failure is None

    def unavailable(self) -> SandboxUnavailable:
        """The error for a failed check with ``required`` (exit 85)."""
        reason = self.failure or "the self-check did not run"
        hint = PROBE_HINT if "self-check failed" in reason else USERNS_HINT
        return SandboxUnavailable(
            f"the sandbox is required but cannot run: {reason}", status=self.status, hint=hint
        )

    def close(self) -> None:
        if self._check is not None:
            self._check.close()
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
) -> RunningSandbox:
    """Bridge ``endpoints`` and prepare the sandbox and its self-check (or raise, with
    ``required``, when bwrap or a seccomp filter is missing)."""
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
        proxy = next((f"{BRIDGE_DIR}/{n}" for p, n in bridge.pairs if p == proxy_port), None)
        sandbox._check = _SelfCheck(probed_paths(spec), proxy)
        fd = _memfd(program)
        sandbox._fds.append(fd)
        sandbox.command = BwrapCommand(bwrap, spec, fd, bridge.dir)
        sandbox.pass_fds = (fd, *sandbox._check.sandbox_fds)
        status.update(
            {
                "active": True,
                "bwrap": bwrap,
                "uid": spec.uid,
                "seccomp": {"arch": arch.name, "instructions": len(program) // 8},
                "bridged_ports": [port for port, _ in bridge.pairs],
                "hidden": list(spec.hidden),
                "env": sorted(env),
                "probes": [],
            }
        )
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


class _SelfCheck:
    """Two pipes to the relay (results out, go in) and the host canaries the probes aim at."""

    def __init__(self, hidden: list[str], proxy_socket: str | None) -> None:
        self._hidden = hidden
        self._proxy = proxy_socket
        self.failure: str | None = None
        self._canaries = _Canaries()
        self._results, results_w = os.pipe()
        go_r, self._go = os.pipe()
        self.sandbox_fds = (results_w, go_r)  # the relay's ends; closed here once it runs
        self._open = [self._results, self._go, results_w, go_r]

    def relay_options(self) -> list[str]:
        results_w, go_r = self.sandbox_fds
        opts = ["--check", f"{results_w},{go_r}"]
        opts += ["--canary-tcp", str(self._canaries.tcp_port)]
        opts += ["--canary-udp", str(self._canaries.udp_port)]
        for path in self._hidden:
            opts += ["--hidden", path]
        if self._proxy is not None:
            opts += ["--proxy", self._proxy]
        return opts

    def started(self) -> None:
        for fd in self.sandbox_fds:
            self._close(fd)

    def results(self, timeout: float) -> tuple[list[dict[str, Any]], str | None]:
        """The probes' results; EOF first means the sandbox did not start (bwrap said why)."""
        data = b""
        deadline = time.monotonic() + timeout
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._results], [], [], remaining)[0]:
                return [], f"the self-check did not answer within {timeout:.0f} s"
            chunk = os.read(self._results, 65536)
            if not chunk:
                return [], "bwrap could not start the sandbox (its message is in the output)"
            data += chunk
        probes: list[dict[str, Any]] = json.loads(data)
        heard = self._canaries.heard()
        for probe in probes:
            if probe["id"] in heard:
                probe["ok"] = False
                probe["detail"] += "; the host canary heard it"
        return probes, None

    def release(self, *, go: bool) -> None:
        if go:
            with contextlib.suppress(OSError):  # the sandbox is gone: the runner sees it end
                os.write(self._go, _GO)
        self._close(self._go)

    def _close(self, fd: int) -> None:
        if fd in self._open:
            self._open.remove(fd)
            os.close(fd)

    def close(self) -> None:
        for fd in list(self._open):
            self._close(fd)
        self._canaries.close()


class _Canaries:
    """Host listeners on 127.0.0.1 that the probes try to reach: they must hear nothing."""

    def __init__(self) -> None:
        self._tcp = socket.create_server(("127.0.0.1", 0))
        self._tcp.setblocking(False)
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind(("127.0.0.1", 0))
        self._udp.setblocking(False)
        self.tcp_port = self._tcp.getsockname()[1]
        self.udp_port = self._udp.getsockname()[1]

    def heard(self) -> set[str]:
        heard = set()
        with contextlib.suppress(BlockingIOError):
            self._tcp.accept()[0].close()
            heard.add("net.tcp_out")
        with contextlib.suppress(BlockingIOError):
            self._udp.recv(64)
            heard.add("net.udp_out")
        return heard

    def close(self) -> None:
        self._tcp.close()
        self._udp.close()
