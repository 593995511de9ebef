"""Which CI variables the agent must never see, and the agent's environment under a policy.

:data:`SENSITIVE_CI_VARIABLES` is always withheld, whatever the policy says: these variables let
the agent act *as the job* (mint an OIDC token, write the artifact cache, push with the job
token) or as Airlock itself (talk to the broker, sign a session). Entries are exact names or
trailing ``*`` globs, the same syntax as ``environment.remove`` in the policy. Why each one:

- ``ACTIONS_ID_TOKEN_REQUEST_URL`` / ``_TOKEN``: together they mint the job's OIDC token, which
  the broker exchanges for credentials: the agent could obtain every grant of the job.
- ``ACTIONS_RUNTIME_TOKEN`` / ``ACTIONS_RUNTIME_URL`` / ``ACTIONS_RESULTS_URL`` /
  ``ACTIONS_CACHE_URL`` / ``ACTIONS_CACHE_SERVICE_V2``: artifact and cache service access
  (cache poisoning of later jobs, tampering with uploaded artifacts).
- ``GITHUB_ENV`` / ``GITHUB_PATH``: files whose content becomes the environment and PATH of the
  job's *later* steps, including Airlock's own seal and archive steps (``LD_PRELOAD`` there would
  defeat them). ``GITHUB_OUTPUT`` and ``GITHUB_STEP_SUMMARY`` stay: agents use them legitimately.
- ``CI_JOB_JWT*``: GitLab's legacy OIDC-style job tokens (same reason as the OIDC request pair).
- ``CI_JOB_TOKEN``, ``CI_BUILD_TOKEN``, and ``CI_REGISTRY_PASSWORD`` and
  ``CI_DEPENDENCY_PROXY_PASSWORD`` (which hold the job token): API, registry and repository
  access as the job. ``CI_REPOSITORY_URL`` embeds the job token in its userinfo.
- ``CI_DEPLOY_PASSWORD``: a deploy token GitLab injects when one named ``gitlab-deploy-token``
  exists.
- ``AIRLOCK_BROKER_TOKEN*``, ``AIRLOCK_KEY*``, ``AIRLOCK_SIGNING_KEY*``, ``AIRLOCK_HMAC_KEY*``:
  Airlock's own broker credential, signing and correlation keys.
- ``AIRLOCK_ID_TOKEN``: the default GitLab ``id_tokens`` variable Airlock exchanges at the
  broker (same reason as the OIDC request pair).

Not listed, because the agent may need them and the policy decides: ``GITHUB_TOKEN`` (only
present when a workflow puts it in ``env:``) and tokens declared under GitLab ``id_tokens:``
(their names are chosen per job). List them in ``environment.remove``, or use held mode.

Removing a variable does not hide what the agent's OS user can read on disk (for example the
git credentials a runner leaves in the checkout): see docs/policy.md, "What this does not do".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # `airlock run` imports this module before it reads the policy
    from airlock.policy import Policy

__all__ = ["SENSITIVE_CI_VARIABLES", "agent_environment", "is_sensitive_variable", "removed_names"]

SENSITIVE_CI_VARIABLES: tuple[str, ...] = (
    # GitHub Actions
    "ACTIONS_ID_TOKEN_REQUEST_URL",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
    "ACTIONS_RUNTIME_TOKEN",
    "ACTIONS_RUNTIME_URL",
    "ACTIONS_RESULTS_URL",
    "ACTIONS_CACHE_URL",
    "ACTIONS_CACHE_SERVICE_V2",
    "GITHUB_ENV",
    "GITHUB_PATH",
    # GitLab CI
    "CI_JOB_JWT*",
    "CI_JOB_TOKEN",
    "CI_BUILD_TOKEN",
    "CI_REGISTRY_PASSWORD",
    "CI_DEPENDENCY_PROXY_PASSWORD",
    "CI_DEPLOY_PASSWORD",
    "CI_REPOSITORY_URL",
    # Airlock itself
    "AIRLOCK_BROKER_TOKEN*",
    "AIRLOCK_ID_TOKEN",
    "AIRLOCK_KEY*",
    "AIRLOCK_SIGNING_KEY*",
    "AIRLOCK_HMAC_KEY*",
)


def is_sensitive_variable(name: str) -> bool:
    """True when ``name`` is one of :data:`SENSITIVE_CI_VARIABLES` (exact or by its glob)."""
    return _matches_any(name, SENSITIVE_CI_VARIABLES)


def _matches_any(name: str, patterns: Iterable[str]) -> bool:
    from airlock.policy.default import env_pattern_matches

    return any(env_pattern_matches(pattern, name) for pattern in patterns)


def removed_names(environ: Mapping[str, str], policy: Policy) -> list[str]:
    """Names in ``environ`` that the agent will not see under ``policy``, sorted.

    Useful to record *which* variables were withheld (names only) in the session log.
    """
    masked = () if policy.environment.keep_masked_vars else policy.mask.env
    return sorted(
        name
        for name in environ
        if is_sensitive_variable(name) or policy.environment.removes(name) or name in masked
    )


def agent_environment(environ: Mapping[str, str], policy: Policy) -> dict[str, str]:
    """A copy of ``environ`` without the sensitive CI variables and what ``policy`` removes."""
    dropped = set(removed_names(environ, policy))
    return {name: value for name, value in environ.items() if name not in dropped}
