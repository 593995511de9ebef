"""The agent's sandbox (bubblewrap): compile the policy's ``sandbox:`` section
(:mod:`.spec`), build the bwrap command line (:mod:`.bwrap`) and its seccomp filter
(:mod:`.seccomp`), bridge host endpoints into the sandbox's own network namespace
(:mod:`.bridge`), and check the walls from inside before the agent starts (:mod:`.runtime`).
docs/sandbox.md explains the choices.
"""

from airlock.sandbox.runtime import RunningSandbox, SandboxUnavailable, sandbox_env, start_sandbox
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
