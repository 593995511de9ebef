"""The session policy (``airlock.yaml``): how a session is captured, masked and scrubbed.

``load_policy(path)`` / ``parse_policy(text)`` return a frozen :class:`Policy` or raise one
:class:`PolicyError` (a :class:`~airlock.errors.ConfigError`) listing every problem.
``DEFAULT_POLICY`` is what ``airlock run`` uses without ``--policy``. docs/policy.md is the
reference; docs/policy.schema.json is :func:`policy_json_schema` committed.
"""

from airlock.policy.load import (
    MAX_POLICY_BYTES,
    PolicyError,
    PolicyProblem,
    load_policy,
    parse_policy,
)
from airlock.policy.model import (
    DEFAULT_POLICY,
    CaptureSettings,
    EnvironmentPolicy,
    MaskPattern,
    MaskPolicy,
    Policy,
    builtin_rule_ids,
    env_pattern_matches,
)
from airlock.policy.schema import policy_json_schema

__all__ = [
    "DEFAULT_POLICY",
    "MAX_POLICY_BYTES",
    "CaptureSettings",
    "EnvironmentPolicy",
    "MaskPattern",
    "MaskPolicy",
    "Policy",
    "PolicyError",
    "PolicyProblem",
    "builtin_rule_ids",
    "env_pattern_matches",
    "load_policy",
    "parse_policy",
    "policy_json_schema",
]
