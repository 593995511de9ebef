"""The session policy (``airlock.yaml``): how a session is captured, masked and scrubbed,
which gateways it runs and which guardrails they enforce.

``load_policy(path)`` / ``parse_policy(text)`` return a frozen :class:`Policy` or raise one
:class:`PolicyError` (a :class:`~airlock.errors.ConfigError`) listing every problem.
``DEFAULT_POLICY`` is what ``airlock run`` uses without ``--policy``. docs/policy.md is the
reference; docs/policy.schema.json is :func:`policy_json_schema` committed.

Names are imported on first use (PEP 562): ``airlock run`` without a policy file reads the
defaults through :mod:`airlock.policy.default` and never loads pydantic or the models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airlock.lazy import lazy_exports

if TYPE_CHECKING:
    from airlock.policy.gateways import (
        GatewayConfig,
        HttpCredential,
        HttpGatewayConfig,
        PostgresCredential,
        PostgresGatewayConfig,
        PostgresUpstream,
    )
    from airlock.policy.guardrails import (
        Decision,
        GuardrailDefaults,
        GuardrailRule,
        HttpMatch,
        HttpRequestInfo,
        SqlMatch,
        SqlStatement,
        decide_http,
        decide_sql,
        rules_for_gateway,
    )
    from airlock.policy.load import (
        MAX_POLICY_BYTES,
        PolicyError,
        PolicyProblem,
        load_policy,
        parse_policy,
    )
    from airlock.policy.model import (
        DEFAULT_POLICY,
        ApprovalsPolicy,
        CaptureSettings,
        EnvironmentPolicy,
        MaskPattern,
        MaskPolicy,
        Policy,
        builtin_rule_ids,
        env_pattern_matches,
    )
    from airlock.policy.network import NetworkPolicy
    from airlock.policy.sandbox import SandboxFilesystem, SandboxPolicy
    from airlock.policy.schema import policy_json_schema

__all__ = [
    "DEFAULT_POLICY",
    "MAX_POLICY_BYTES",
    "ApprovalsPolicy",
    "CaptureSettings",
    "Decision",
    "EnvironmentPolicy",
    "GatewayConfig",
    "GuardrailDefaults",
    "GuardrailRule",
    "HttpCredential",
    "HttpGatewayConfig",
    "HttpMatch",
    "HttpRequestInfo",
    "MaskPattern",
    "MaskPolicy",
    "NetworkPolicy",
    "Policy",
    "PolicyError",
    "PolicyProblem",
    "PostgresCredential",
    "PostgresGatewayConfig",
    "PostgresUpstream",
    "SandboxFilesystem",
    "SandboxPolicy",
    "SqlMatch",
    "SqlStatement",
    "builtin_rule_ids",
    "decide_http",
    "decide_sql",
    "env_pattern_matches",
    "load_policy",
    "parse_policy",
    "policy_json_schema",
    "rules_for_gateway",
]

_WHERE = {
    "ApprovalsPolicy": "model",
    "CaptureSettings": "model",
    "DEFAULT_POLICY": "model",
    "Decision": "guardrails",
    "EnvironmentPolicy": "model",
    "GatewayConfig": "gateways",
    "GuardrailDefaults": "guardrails",
    "GuardrailRule": "guardrails",
    "HttpCredential": "gateways",
    "HttpGatewayConfig": "gateways",
    "HttpMatch": "guardrails",
    "HttpRequestInfo": "guardrails",
    "MAX_POLICY_BYTES": "load",
    "MaskPattern": "model",
    "MaskPolicy": "model",
    "NetworkPolicy": "network",
    "Policy": "model",
    "PolicyError": "load",
    "PolicyProblem": "load",
    "PostgresCredential": "gateways",
    "PostgresGatewayConfig": "gateways",
    "PostgresUpstream": "gateways",
    "SandboxFilesystem": "sandbox",
    "SandboxPolicy": "sandbox",
    "SqlMatch": "guardrails",
    "SqlStatement": "guardrails",
    "builtin_rule_ids": "model",
    "decide_http": "guardrails",
    "decide_sql": "guardrails",
    "env_pattern_matches": "model",
    "load_policy": "load",
    "parse_policy": "load",
    "policy_json_schema": "schema",
    "rules_for_gateway": "guardrails",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, __all__)
