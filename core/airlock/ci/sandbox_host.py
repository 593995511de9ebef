"""Make a CI runner able to run the agent's sandbox (docs/sandbox.md), and say what was done.

On Linux: install bubblewrap when it is missing (apt-get, with sudo when not root), and lift
Ubuntu 24.04's AppArmor restriction on unprivileged user namespaces
(``kernel.apparmor_restrict_unprivileged_userns``) with sudo, saying so in the log. Elsewhere
(macOS, Windows) there is no bubblewrap: ``required`` refuses (exit 85), ``best_effort`` warns and
``airlock run`` records the downgrade. Nothing here decides containment: ``airlock run`` checks
the sandbox itself and fails closed.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from airlock.errors import InfrastructureUnavailable, UsageError

__all__ = ["APPARMOR_USERNS", "prepare_sandbox_host"]

APPARMOR_USERNS = Path("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
_MODES = ("required", "best_effort", "off")
Runner = Callable[[Sequence[str]], int]


def _run(argv: Sequence[str]) -> int:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(argv, env=env, check=False, stdout=subprocess.DEVNULL).returncode


def prepare_sandbox_host(
    mode: str,
    *,
    say: Callable[[str], None],
    run: Runner = _run,
    system: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Prepare this runner for ``mode``; raise when ``required`` cannot be met here."""
    if mode not in _MODES:
        raise UsageError(f"sandbox must be one of {', '.join(_MODES)}, not {mode!r}")
    if mode == "off":
        return
    system = system or platform.system()
    if system != "Linux":
        message = f"the agent's sandbox needs Linux (bubblewrap); this runner is {system}"
        if mode == "required":
            raise InfrastructureUnavailable(
                message, hint="run the agent on a Linux runner, or set `sandbox: best_effort`"
            )
        say(f"warning: {message}: the agent runs uncontained (best_effort, recorded)")
        return
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if shutil.which("bwrap") is None:
        say("installing bubblewrap for the agent's sandbox (apt-get)")
        if run([*sudo, "apt-get", "install", "-y", "-qq", "bubblewrap"]) != 0:
            run([*sudo, "apt-get", "update", "-qq"])
            run([*sudo, "apt-get", "install", "-y", "-qq", "bubblewrap"])
    if _read(APPARMOR_USERNS) == "1":
        say(
            "lifting kernel.apparmor_restrict_unprivileged_userns (Ubuntu 24.04) for this job, "
            "so that bubblewrap can create the sandbox's user namespace: sudo sysctl -w "
            "kernel.apparmor_restrict_unprivileged_userns=0"
        )
        if run([*sudo, "sysctl", "-w", "kernel.apparmor_restrict_unprivileged_userns=0"]) != 0:
            say("warning: could not change the sysctl (no sudo?): airlock run will say what failed")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
