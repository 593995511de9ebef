"""The session policy (``airlock.yaml``): how a session is captured, masked and scrubbed,
which gateways it runs and which guardrails they enforce.

``load_policy(path)`` / ``parse_policy(text)`` return a frozen :class:`Policy` or raise one
:class:`PolicyError` (a :class:`~airlock.errors.ConfigError`) listing every problem.
``DEFAULT_POLICY`` is what ``airlock run`` uses without ``--policy``. docs/policy.md is the
reference; docs/policy.schema.json is :func:`policy_json_schema` committed.
"""

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
