"""The agent's sandbox (bubblewrap): compile the policy's ``sandbox:`` section
(:mod:`.spec`), build the bwrap command line (:mod:`.bwrap`) and its seccomp filter
(:mod:`.seccomp`), bridge host endpoints into the sandbox's own network namespace
(:mod:`.bridge`), and check the walls from inside before the agent starts (:mod:`.runtime`).
docs/sandbox.md explains the choices.

Names are imported on first use (PEP 562): `airlock run` with the sandbox off loads only
:mod:`.checkout` (the journal of a killed run's hidden git credentials).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airlock.lazy import lazy_exports

if TYPE_CHECKING:
    from airlock.sandbox.runtime import (
        RunningSandbox,
        SandboxUnavailable,
        sandbox_env,
        start_sandbox,
    )
    from airlock.sandbox.spec import SandboxSpec, compile_spec, protected_paths

__all__ = [
    "RunningSandbox",
    "SandboxSpec",
    "SandboxUnavailable",
    "compile_spec",
    "protected_paths",
    "sandbox_env",
    "start_sandbox",
]

_WHERE = {
    "RunningSandbox": "runtime",
    "SandboxSpec": "spec",
    "SandboxUnavailable": "runtime",
    "compile_spec": "spec",
    "protected_paths": "spec",
    "sandbox_env": "runtime",
    "start_sandbox": "runtime",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, __all__)
