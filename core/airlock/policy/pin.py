"""Where the session policy comes from, and whether it may be trusted: ``policy-sha256`` pins.

The policy decides what the session that runs the code under review may do. On GitHub, some
events run the workflow file of the base branch (trusted) while the job checks out a pull
request's code (untrusted): a policy file read from that checkout is the PR author's to write.
Under those events (:data:`TRUSTED_WORKFLOW_EVENTS`, or whenever ``AIRLOCK_REQUIRE_POLICY_PIN``
is set) a policy file is used only with a ``policy-sha256`` pin that matches its exact bytes;
an inline policy (part of the workflow file) is always accepted. A pin that does not match is
refused under every event.

A policy value holding a newline is the policy itself (inline YAML); any other value is a path.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path

from airlock.errors import ConfigError, UsageError
from airlock.policy.default import PolicySource
from airlock.policy.load import load_policy_bytes, parse_policy, policy_from_bytes
from airlock.policy.model import DEFAULT_POLICY, Policy

__all__ = [
    "TRUSTED_WORKFLOW_EVENTS",
    "PolicyPinError",
    "PolicySource",
    "load_session_policy",
    "parse_pin",
    "pin_required_reason",
    "split_policy_value",
]

# Events whose workflow file comes from the default or base branch while the run may act on a
# pull request's code (GitHub docs, "Events that trigger workflows"). pull_request,
# pull_request_review(_comment) and merge_group run the workflow of the PR's own merge ref:
# the PR author writes that workflow, so no pin in it could bind them.
TRUSTED_WORKFLOW_EVENTS = frozenset({"pull_request_target", "issue_comment", "workflow_run"})

_PIN = re.compile(r"(?:sha256:)?([0-9a-fA-F]{64})")
_TRUE = {"1", "true", "yes", "on"}


class PolicyPinError(ConfigError):
    """The policy file is refused: unpinned where a pin is required, or its pin does not match."""


def split_policy_value(value: str | Path | None) -> tuple[Path | None, str | None]:
    """``--policy`` / ``policy:``: (path, None), or (None, inline text) when it holds a newline
    (a one-line ``policy: |`` block ends with one, so it counts as inline too)."""
    text = "" if value is None else str(value)
    if "\n" in text:
        return None, text
    return (Path(text.strip()), None) if text.strip() else (None, None)


def parse_pin(value: str | None) -> str | None:
    """The 64 hex digits of a ``policy-sha256`` value (``sha256:`` prefix allowed), lower case."""
    if value is None or not value.strip():
        return None
    match = _PIN.fullmatch(value.strip())
    if match is None:
        raise UsageError(
            "policy-sha256 must be the 64 hex digits of the policy file's SHA-256",
            hint="compute it with `sha256sum airlock.yaml` on the file as committed",
        )
    return match.group(1).lower()


def pin_required_reason(environ: Mapping[str, str]) -> str | None:
    """Why this job needs a pinned or inline policy, or None when a file may be used as is."""
    if environ.get("AIRLOCK_REQUIRE_POLICY_PIN", "").strip().lower() in _TRUE:
        return "AIRLOCK_REQUIRE_POLICY_PIN is set"
    event = environ.get("GITHUB_EVENT_NAME", "")
    if event in TRUSTED_WORKFLOW_EVENTS:
        return (
            f"this workflow runs on {event}: its workflow file is the base branch's, but the "
            "checkout may be a pull request's, whose author could write the policy file"
        )
    return None


def load_session_policy(
    path: Path | None,
    *,
    text: str | None = None,
    pin: str | None = None,
    environ: Mapping[str, str],
) -> tuple[Policy, PolicySource]:
    """The session's policy and where it came from; :class:`PolicyPinError` when refused.

    The pin is checked over the same bytes that are parsed (one read), so a file swapped or
    re-pointed by a symlink between a check and the load cannot slip through.
    """
    expected = parse_pin(pin)
    if text is not None and path is not None:
        raise UsageError("give the policy as a file or inline, not both")
    if text is not None:
        if expected is not None:
            raise UsageError(
                "policy-sha256 pins a policy file; an inline policy is part of the workflow "
                "and needs no pin",
                hint="remove policy-sha256, or give the policy as a file path",
            )
        return parse_policy(text, "<inline policy>"), PolicySource("inline", "inline", _sha(text))
    if path is None:
        if expected is not None:
            raise UsageError(
                "policy-sha256 is set but no policy file is given",
                hint="set policy to the file the pin is for, or remove policy-sha256",
            )
        return DEFAULT_POLICY, PolicySource("default", None, None)
    raw = load_policy_bytes(path)
    actual = hashlib.sha256(raw).hexdigest()
    if expected is not None and actual != expected:
        raise PolicyPinError(
            f"the policy file {path} does not match its policy-sha256 pin: refused",
            hint=(
                "the pin is over the file's exact bytes (line endings included); if the policy "
                "changed on purpose, update the pin in the workflow to `sha256sum` of the file"
            ),
        )
    if expected is None:
        reason = pin_required_reason(environ)
        if reason is not None:
            raise PolicyPinError(
                "inline the policy or pin it with policy-sha256: the policy file "
                f"{path} is not pinned, and {reason}",
                hint=(
                    "give the YAML itself as a multi-line policy value, or set policy-sha256 "
                    "(--policy-sha256, AIRLOCK_POLICY_SHA256) to `sha256sum` of the file as "
                    "committed"
                ),
            )
    policy = policy_from_bytes(raw, str(path))
    origin = "pinned" if expected is not None else "path"
    return policy, PolicySource(origin, str(path), "sha256:" + actual)


def _sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
