"""Start-up work of ``airlock run`` that can go on in the background: compiling the mask rules
(hyperscan releases the GIL while it compiles) and probing strace (a process to wait for), while
the rest of start-up (imports, signing key, identity) runs on the main thread.

Nothing here decides anything: the session still builds its own masker (which takes the
compiled rules, or waits for them) and fails closed on the probe's result as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from airlock.capture.tracer import TracerStatus, start_probe
from airlock.mask import Masker, MaskSettings, PatternRule

if TYPE_CHECKING:  # a run without a policy file never loads the models (policy.default)
    from airlock.policy import Policy

__all__ = ["mask_settings", "start_probe", "warm_up"]


def mask_settings(policy: Policy, secret_env: Mapping[str, str], hmac_key: bytes) -> MaskSettings:
    """The session's mask settings: built-in rules, the policy's patterns, its env secrets."""
    literals = tuple(
        (f"env:{name}", secret_env[name]) for name in policy.mask.env if secret_env.get(name)
    )
    patterns = tuple(
        PatternRule(p.id, p.regex, p.max_len, p.description) for p in policy.mask.patterns
    )
    return MaskSettings(
        literals=literals,
        patterns=patterns,
        builtin=policy.mask.builtin,
        correlate=policy.mask.correlate,
        hmac_key=hmac_key if policy.mask.correlate == "hmac" else None,
        weak=policy.mask.weak,
    )


def warm_up(
    policy: Policy,
    strace_path: str | None,
    probe: Callable[[], TracerStatus] | None = None,
) -> Callable[[], TracerStatus] | None:
    """Start compiling the policy's mask rules and, when exec capture is on, probing strace
    (or use ``probe``, one started before the policy was read)."""
    Masker.warm_up(mask_settings(policy, {}, b""))
    if policy.capture.exec == "off":
        return None
    return probe or start_probe(strace_path)
