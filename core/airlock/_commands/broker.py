"""`airlock broker`: serve the broker, explain its trust policy, check it, print its schema."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from airlock._commands._common import add_flag
from airlock.errors import ExitCode, UsageError
from airlock.policy.broker_config import BrokerConfig, broker_config_schema, load_broker_config
from airlock.policy.trust import Explanation, RuleReport, compile_trust_policy

__all__ = ["register"]

_MAX_CLAIMS_BYTES = 1024 * 1024


def register(sub: Any) -> None:
    """Add ``airlock broker`` and its subcommands."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "broker", help="the credential broker: explain its trust policy, print its schema, serve"
    )
    commands = parser.add_subparsers(dest="broker_command", metavar="SUBCOMMAND", required=True)
    _register_explain(commands)
    _register_check(commands)
    schema = commands.add_parser("schema", help="print the JSON Schema of the broker config")
    schema.set_defaults(func=_schema)
    serve = commands.add_parser("serve", help="run the broker service under uvicorn")
    add_flag(serve, "--config", env="AIRLOCK_BROKER_CONFIG", help="broker config YAML")
    add_flag(serve, "--host", env="AIRLOCK_BROKER_HOST", default="127.0.0.1", help="listen address")
    add_flag(serve, "--port", env="AIRLOCK_BROKER_PORT", type=int, default=8080, help="listen port")
    add_flag(
        serve,
        "--signing-key",
        env="AIRLOCK_BROKER_SIGNING_KEY",
        type=Path,
        help="Ed25519 key that signs checkpoints (PEM; default: the local key)",
    )
    add_flag(
        serve,
        "--sweep-interval",
        env="AIRLOCK_BROKER_SWEEP_INTERVAL",
        type=float,
        default=30.0,
        help="seconds between sweeps of expired leases",
    )
    add_flag(
        serve,
        "--workers",
        env="AIRLOCK_BROKER_WORKERS",
        type=int,
        default=1,
        help="worker processes on one socket, each a broker over the shared state (SQLite on "
        "one host, or PostgreSQL)",
    )
    serve.set_defaults(func=_serve)


def _unset(env: str) -> bool:
    """A required flag stops being required when its environment variable provides it."""
    return not os.environ.get(env)


def _register_explain(commands: Any) -> None:
    explain: argparse.ArgumentParser = commands.add_parser(
        "explain",
        help="show which rule matches a job's claims, or exactly why each rule does not",
        description="Evaluate the trust policy against claims taken as given (no token is "
        "verified). Exit 0 when the request would be allowed, 81 when denied.",
    )
    add_flag(
        explain,
        "--config",
        env="AIRLOCK_BROKER_CONFIG",
        required=_unset("AIRLOCK_BROKER_CONFIG"),
        help="broker config YAML",
    )
    add_flag(
        explain,
        "--claims",
        env="AIRLOCK_CLAIMS",
        required=_unset("AIRLOCK_CLAIMS"),
        help="JSON file with the token's claims (a decoded token payload)",
    )
    add_flag(
        explain,
        "--grant",
        env="AIRLOCK_GRANT",
        action="append",
        required=_unset("AIRLOCK_GRANT"),
        help="a requested grant; repeat for several",
    )
    add_flag(explain, "--issuer", env="AIRLOCK_ISSUER", help="issuer name (default: from iss)")
    add_flag(explain, "--json", env="AIRLOCK_JSON", action="store_true", help="print JSON")
    explain.set_defaults(func=_explain)


def _register_check(commands: Any) -> None:
    check: argparse.ArgumentParser = commands.add_parser(
        "check", help="validate and compile a broker config; list every problem"
    )
    add_flag(
        check,
        "--config",
        env="AIRLOCK_BROKER_CONFIG",
        required=_unset("AIRLOCK_BROKER_CONFIG"),
        help="broker config YAML",
    )
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    policy = compile_trust_policy(load_broker_config(args.config))
    unsafe = [rule.id for rule in policy.rules if rule.unsafe]
    print(
        f"{args.config}: ok: {len(policy.config.issuers)} issuer(s), {len(policy.grants)} "
        f"grant(s), {len(policy.rules)} rule(s)"
    )
    if unsafe:
        print(f"warning: rules marked unsafe (no immutable id binding): {', '.join(unsafe)}")
    return int(ExitCode.OK)


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(broker_config_schema(), indent=2, sort_keys=True))
    return int(ExitCode.OK)


def _serve(args: argparse.Namespace) -> int:
    if not args.config:
        raise UsageError("--config is required", hint="airlock broker serve --config broker.yaml")
    from airlock.broker.app import serve

    serve(
        args.config,
        host=args.host,
        port=args.port,
        workers=args.workers,
        signing_key=args.signing_key,
        sweep_interval=args.sweep_interval,
    )
    return 0


def _explain(args: argparse.Namespace) -> int:
    policy = compile_trust_policy(load_broker_config(args.config))
    claims = _read_claims(Path(args.claims))
    issuer = _issuer_name(policy.config, claims, args.issuer)
    explanation = policy.explain(issuer, claims, args.grant)
    if args.json:
        print(json.dumps(_as_json(issuer, explanation), indent=2))
    else:
        print(_as_text(policy.config, issuer, args.grant, explanation))
    return int(ExitCode.OK if explanation.decision.allowed else ExitCode.DENIED)


def _read_claims(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()[: _MAX_CLAIMS_BYTES + 1]
        claims = json.loads(raw) if len(raw) <= _MAX_CLAIMS_BYTES else None
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"cannot read claims from {path}: {type(exc).__name__}",
            hint="--claims takes a JSON file holding the token's decoded payload",
        ) from None
    if not isinstance(claims, dict):
        raise UsageError(
            f"{path} does not hold a JSON object of claims (at most 1 MiB)",
            hint="--claims takes a JSON file holding the token's decoded payload",
        )
    return claims


def _issuer_name(config: BrokerConfig, claims: dict[str, Any], given: str | None) -> str:
    names = [entry.name for entry in config.issuers]
    if given:
        if given not in names:
            raise UsageError(f"--issuer {given!r} is not in the config; known: {names}")
        return given
    by_url = {entry.url: entry.name for entry in config.issuers}
    iss = claims.get("iss")
    if isinstance(iss, str) and iss in by_url:
        return by_url[iss]
    if len(names) == 1:
        return names[0]
    raise UsageError(
        "cannot tell the issuer: the claims' iss is not a configured issuer URL",
        hint=f"pass --issuer with one of {names}",
    )


def _as_text(
    config: BrokerConfig, issuer: str, requested: list[str], explanation: Explanation
) -> str:
    entry = config.issuer(issuer)
    lines = [
        f"issuer: {issuer} ({entry.url if entry else 'not configured'})",
        f"requested grants: {', '.join(dict.fromkeys(requested))}",
        "",
    ]
    if not explanation.reports:
        lines.append("  (no rule for this issuer)")
    lines.extend(line for report in explanation.reports for line in _report_lines(report))
    decision = explanation.decision
    lines.append("")
    if decision.allowed:
        lines.append(f"decision: ALLOWED by rule {decision.rule_id}: {', '.join(decision.grants)}")
        if decision.not_granted:
            lines.append(
                f"  not granted (outside the rule's ceiling): {', '.join(decision.not_granted)}"
            )
    else:
        lines.append(f"decision: DENIED: {decision.reason_public.removeprefix('denied: ')}")
    return "\n".join(lines)


def _report_lines(report: RuleReport) -> list[str]:
    if report.effect == "deny":
        head = "applies: refuses the request" if report.matched else "does not apply"
    elif report.matched:
        granted = ", ".join(report.granted) or "none of the requested grants"
        head = f"matches; its ceiling allows: {granted}"
    else:
        head = "does not match"
    mark = "+" if report.matched and report.effect == "allow" else ("!" if report.matched else "-")
    lines = [f"  {mark} rule {report.rule_id} ({report.effect}): {head}"]
    lines.extend(f"      {m.detail}" for m in report.mismatches)
    return lines


def _as_json(issuer: str, explanation: Explanation) -> dict[str, Any]:
    decision = explanation.decision
    return {
        "issuer": issuer,
        "allowed": decision.allowed,
        "rule_id": decision.rule_id,
        "grants": list(decision.grants),
        "not_granted": list(decision.not_granted),
        "reason_public": decision.reason_public,
        "reason_detail": decision.reason_detail,
        "rules": [
            {
                "id": report.rule_id,
                "effect": report.effect,
                "matched": report.matched,
                "granted": list(report.granted),
                "mismatches": [{"claim": m.claim, "detail": m.detail} for m in report.mismatches],
            }
            for report in explanation.reports
        ],
    }
