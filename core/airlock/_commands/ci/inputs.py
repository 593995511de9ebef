"""Action inputs checked before anything starts: ``airlock ci check-inputs NAME=VALUE…``.

The composite actions (actions/run, gate, credentials, archive, verify) run this as their first
step after the install, with every input they take; the root and session actions call
:func:`check_values` from their main step. A bad value is a UsageError that names the input and
the fix: exit 80, an ``::error::`` annotation, and no session, lease or approval started.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from airlock.errors import UsageError

__all__ = ["check_inputs_command", "check_values", "register_check_inputs"]

_BOOLEAN = {"true", "false", "1", "0", "yes", "no", "on", "off"}
_SANDBOX = ("required", "best_effort", "off")
_KINDS = ("command", "sql", "http")
_GRANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")


def _choice(*allowed: str) -> Callable[[str, str], None]:
    def check(name: str, value: str) -> None:
        if value not in allowed:
            raise UsageError(
                f"input {name} must be one of {', '.join(allowed)}, not {value!r}",
                hint=f"set `with: {name}:` to one of them, or leave it out for the default",
            )

    return check


def _boolean(name: str, value: str) -> None:
    if value.lower() not in _BOOLEAN:
        raise UsageError(
            f"input {name} must be true or false, not {value!r}", hint=f"set `with: {name}: true`"
        )


def _whole(name: str, value: str) -> None:
    if not value.isdigit() or int(value) == 0:
        raise UsageError(
            f"input {name} must be a whole number of days, not {value!r}",
            hint=f"set `with: {name}: 400`, for example",
        )


def _duration(name: str, value: str) -> None:
    from airlock.policy.broker_config import parse_duration

    try:
        seconds = parse_duration(int(value) if value.isdigit() else value)
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise UsageError(
            f"input {name} must be a duration, not {value!r}",
            hint=f"set `with: {name}:` to e.g. 90s, 30m or 1h30m",
        )


def _url(name: str, value: str) -> None:
    if not re.fullmatch(r"https?://[^\s]+", value):
        raise UsageError(
            f"input {name} must be an http(s):// URL, not {value!r}",
            hint="give the broker's base URL, e.g. https://airlock.example.com",
        )


def _grants(name: str, value: str) -> None:
    bad = [g for g in value.replace(",", " ").split() if not _GRANT.fullmatch(g)]
    if bad:
        raise UsageError(
            f"input {name} holds names that cannot be grants: {', '.join(map(repr, bad))}",
            hint="list grant names of the broker config, separated by commas or spaces",
        )


def _directory(name: str, value: str) -> None:
    if not Path(value).is_dir():
        raise UsageError(
            f"input {name} {value!r} is not a directory",
            hint="give a directory of the checkout (relative to the workspace), or leave it empty",
        )


def _policy_file(name: str, value: str) -> None:
    if "\n" in value:  # inline YAML: checked with the pin by _check_policy
        return
    if not Path(value.strip()).is_file():
        raise UsageError(
            f"input {name} {value!r} is not a file", hint="give the path relative to the workspace"
        )


def _backend(name: str, value: str) -> None:
    from airlock.jobs.approvals import BACKENDS

    _choice(*BACKENDS)(name, value)


_CHECKS: dict[str, Callable[[str, str], None]] = {
    "allow-incomplete": _boolean,
    "audience": lambda name, value: None,
    "backend": _backend,
    "broker-url": _url,
    "fail-mode": _choice("closed", "open"),
    "grants": _grants,
    "kind": _choice(*_KINDS),
    "policy": _policy_file,
    "policy-sha256": lambda name, value: None,  # checked with the policy by _check_policy
    "record-scripts": _boolean,
    "retention-days": _whole,
    "revoke": _boolean,
    "sandbox": _choice(*_SANDBOX),
    "timeout": _duration,
    "working-directory": _directory,
}


def check_values(inputs: Mapping[str, str], environ: Mapping[str, str] | None = None) -> None:
    """Check every input this module knows; empty values are left to the defaults."""
    for name, value in inputs.items():
        check = _CHECKS.get(name)
        if check is not None and value.strip():
            check(name, value if name == "policy" else value.strip())
    if "policy" in inputs or "policy-sha256" in inputs:
        _check_policy(inputs, os.environ if environ is None else environ)
    if inputs.get("grants", "").strip() and not inputs.get("broker-url", "").strip():
        raise UsageError(
            "input grants is asked of the broker: set broker-url too",
            hint="set `with: broker-url:` to the broker's URL",
        )


def _check_policy(inputs: Mapping[str, str], environ: Mapping[str, str]) -> None:
    """The policy as the session will load it: parsed, its pin checked, and refused unpinned
    where the checkout is not the workflow's to trust, before any lease or session starts."""
    from airlock.policy.pin import load_session_policy, split_policy_value

    path, text = split_policy_value(inputs.get("policy", ""))
    pin = inputs.get("policy-sha256", "").strip() or None
    load_session_policy(path, text=text, pin=pin, environ=environ)


def _pairs(raw: list[str]) -> dict[str, str]:
    pairs = {}
    for item in raw:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"check-inputs takes NAME=VALUE pairs, not {item!r}")
        pairs[name] = value
    return pairs


def check_inputs_command(args: argparse.Namespace) -> int:
    """``airlock ci check-inputs [--required NAME] NAME=VALUE…``: 0, or 80 naming the input."""
    pairs = _pairs(args.pairs)
    for name in args.required:
        if not pairs.get(name, "").strip():
            raise UsageError(f"input {name} is required", hint=f"set `with: {name}: ...`")
    check_values(pairs)
    return 0


def register_check_inputs(ci_sub: Any) -> None:
    """Add ``airlock ci check-inputs``."""
    parser: argparse.ArgumentParser = ci_sub.add_parser(
        "check-inputs",
        help="check a composite action's inputs before it starts anything (NAME=VALUE …)",
    )
    parser.add_argument("pairs", nargs="*", metavar="NAME=VALUE")
    parser.add_argument("--required", action="append", default=[], metavar="NAME")
    parser.set_defaults(func=check_inputs_command)
