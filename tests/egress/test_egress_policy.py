"""The ``network:`` section: bad input is refused with exit 80 and a message saying what to
change (through the real ``airlock policy check``); good input compiles to rules that decide."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from airlock.errors import ExitCode
from airlock.policy import parse_policy
from airlock.policy.network import BUNDLES, host_matches

_GATEWAY = "gateways: [{name: forge, kind: http, upstream: 'https://api.github.com'}]\n"


def _check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "airlock.yaml"
    path.write_text(text, encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "airlock._cli", "policy", "check", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ("bundles: [gihub]", "unknown bundle 'gihub'; known bundles: github"),
        ("allow: [{id: a, host: '*.'}]", "'*.' needs a domain after it"),
        ("allow: [{id: a, host: '*foo.com'}]", "a wildcard is allowed only as a leading '*.'"),
        ("allow: [{id: a, host: 'a.*.com'}]", "a wildcard is allowed only as a leading '*.'"),
        ("allow: [{id: a, host: '*.0.0.10'}]", "wildcards cannot cover IP addresses"),
        ("allow: [{id: a, host: '10.0.*.1'}]", "a wildcard is allowed only as a leading"),
        ("allow: [{id: a, host: 'https://x.com'}]", "drop the scheme"),
        ("allow: [{id: a, host: 'x.com/api'}]", "paths go in paths:"),
        ("allow: [{id: a, host: 'x.com:443'}]", "give the port in ports:"),
        ("allow: [{id: a, host: 'x.com', ports: [0]}]", "ports are 1-65535"),
        ("allow: [{id: a, host: 'x.com', methods: [get]}]", "not an upper-case HTTP method"),
        ("allow: [{id: a, host: 'x.com', paths: [api]}]", "path globs start with '/'"),
        ("allow: [{id: airlock.x, host: 'x.com'}]", "not start with airlock."),
        ("deny: [{id: a, host: 'x.com', action: allow}]", "unknown key 'action'"),
        (
            "allow: [{id: a, host: x.com}, {id: a, host: y.com}]",
            "network rule id 'a' is used twice",
        ),
        (
            "allow: [{id: api, host: '*.github.com'}]",
            "allow rule 'api' covers api.github.com, the upstream of gateway 'forge': the agent "
            "must go through that gateway (its FORGE_URL)",
        ),
    ],
)
def test_bad_network_section_exits_80_saying_what_to_change(
    tmp_path: Path, network: str, message: str
) -> None:
    done = _check(tmp_path, _GATEWAY + "network: {" + network + "}\n")
    assert done.returncode == ExitCode.USAGE
    out = done.stdout + done.stderr
    assert "network" in out and message in out, out


def test_good_network_section_checks() -> None:
    policy = parse_policy(
        _GATEWAY
        + "network: {bundles: [github], allow: [{id: ok, host: '*.example.com', ports: [8443]}]}"
    )
    assert policy.network is not None
    rules = policy.network.compiled()
    assert rules.decide("github.com", 443).rule_id == "bundle.github"
    assert rules.decide("api.github.com", 443).rule_id == "gateway.forge"  # bundle cannot bypass
    assert rules.decide("api.github.com", 443).action == "deny"
    assert rules.decide("a.b.example.com", 8443).action == "allow"
    assert rules.decide("example.com", 8443).action == "deny"
    assert rules.decide("a.example.com", 443).rule_id == "airlock.default-deny"
    assert policy.network.compiled() is rules  # compiled once, then reused


def test_strictest_rule_wins_and_http_rules_never_match_tunnels() -> None:
    policy = parse_policy(
        "network:\n"
        "  allow:\n"
        "    - {id: all, host: '*.example.com'}\n"
        "    - {id: ask, host: up.example.com, action: require_approval}\n"
        "    - {id: get-only, host: web.example.com, methods: [GET], paths: ['/pub/**']}\n"
        "  deny: [{id: no, host: bad.example.com}]\n"
    )
    assert policy.network is not None
    rules = policy.network.compiled()
    assert rules.decide("bad.example.com", 443).rule_id == "no"
    assert rules.decide("up.example.com", 443).action == "require_approval"
    assert rules.decide("web.example.com", 80, "GET", "/pub/a/b").rule_id in ("all", "get-only")
    only = parse_policy(
        "network: {allow: [{id: g, host: w.example.com, methods: [GET], paths: ['/pub/*']}]}"
    ).network
    assert only is not None
    assert only.compiled().decide("w.example.com", 80, "GET", "/pub/x").action == "allow"
    assert only.compiled().decide("w.example.com", 80, "GET", "/pub/x/y").action == "deny"
    assert only.compiled().decide("w.example.com", 80, "POST", "/pub/x").action == "deny"
    assert only.compiled().decide("w.example.com", 80).action == "deny"  # CONNECT: no path


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "badexample.com", False),
        ("*.example.com", "a.example.com.", True),
        ("Example.COM", "example.com", True),
        ("10.0.0.1", "10.0.0.1", True),
        ("::1", "0:0:0:0:0:0:0:1", True),
        ("*.0.1", "10.0.0.1", False),
        ("example.com", "example.com.evil.net", False),
    ],
)
def test_host_patterns(pattern: str, host: str, expected: bool) -> None:
    assert host_matches(pattern, host) is expected


def test_bundles_are_valid_host_patterns() -> None:
    for name, hosts in BUNDLES.items():
        policy = parse_policy(
            "network: {allow: ["
            + ", ".join(f"{{id: r{i}, host: '{h}'}}" for i, h in enumerate(hosts))
            + "]}"
        )
        assert policy.network is not None, name
