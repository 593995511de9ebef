"""What ``airlock run`` needs of the default policy, without pydantic.

A run without ``--policy`` (and without an inline policy or a pin) uses :data:`DEFAULT_POLICY
<airlock.policy.model.DEFAULT_POLICY>`. Importing pydantic and the policy models costs ~0.13 s
of CPU at every start, and a run of the defaults reads only a few plain values of it. So
:func:`default_run_policy` gives a stand-in: the sections a session reads on every run
(``capture``, ``mask``, ``environment``, ``sandbox``, no gateways, no network) as frozen
dataclasses with the model's defaults, the pinned digest, and every other attribute looked up
on the real ``DEFAULT_POLICY``, which then loads (so nothing the models say is ever guessed).
A test checks every section here against the model, field by field.

No pydantic here, and nothing from the rest of the policy package at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_DIGEST",
    "SANDBOX_MODES",
    "DefaultRunPolicy",
    "PolicySource",
    "default_run_policy",
    "env_pattern_matches",
]

SANDBOX_MODES = ("required", "best_effort", "off")
# ``Policy().digest()``, pinned by a test (tests/policy): update it with the defaults.
DEFAULT_DIGEST = "sha256:c334efa18fa8b809fd7f0e35194f7d1b0b3bbab113ec0c0939baeae4cb629f03"


def env_pattern_matches(pattern: str, name: str) -> bool:
    """True when variable ``name`` matches ``pattern``: an exact name or a trailing ``*`` glob."""
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return name == pattern


@dataclass(frozen=True)
class PolicySource:
    """Where the session's policy came from: ``origin`` is default, inline, path or pinned;
    ``bytes_sha256`` is ``sha256:<hex>`` of the exact bytes read (None for the default)."""

    origin: str
    source: str | None
    bytes_sha256: str | None

    def to_dict(self) -> dict[str, str | None]:
        return {"origin": self.origin, "source": self.source, "bytes_sha256": self.bytes_sha256}


@dataclass(frozen=True)
class _Capture:
    exec: str = "required"
    pty: str = "auto"


@dataclass(frozen=True)
class _Mask:
    env: tuple[str, ...] = ()
    patterns: tuple[Any, ...] = ()
    correlate: str = "none"
    builtin: bool = True
    weak: str = "warn"


@dataclass(frozen=True)
class _Environment:
    remove: tuple[str, ...] = ()
    keep_masked_vars: bool = True

    def removes(self, name: str) -> bool:
        """True when variable ``name`` is matched by one of the ``remove`` entries."""
        return any(env_pattern_matches(pattern, name) for pattern in self.remove)


@dataclass(frozen=True)
class _Filesystem:
    read_write: tuple[str, ...] = ()
    read_only: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Sandbox:
    mode: str = "off"
    filesystem: _Filesystem = field(default_factory=_Filesystem)
    env: tuple[str, ...] = ()
    home_files: tuple[str, ...] = ()


class DefaultRunPolicy:
    """Reads like :data:`~airlock.policy.model.DEFAULT_POLICY` (see the module docstring)."""

    capture = _Capture()
    mask = _Mask()
    environment = _Environment()
    sandbox = _Sandbox()
    gateways: tuple[Any, ...] = ()
    network: Any = None

    def digest(self) -> str:
        """``DEFAULT_POLICY.digest()``."""
        return DEFAULT_DIGEST

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        from airlock.policy.model import DEFAULT_POLICY

        return getattr(DEFAULT_POLICY, name)

    def __repr__(self) -> str:
        return "DefaultRunPolicy()"


_DEFAULT = DefaultRunPolicy()


def default_run_policy() -> DefaultRunPolicy:
    """The stand-in for ``DEFAULT_POLICY`` that ``airlock run`` uses without a policy."""
    return _DEFAULT
