"""CI platform adapters: who ran the session, and what the agent's environment may hold.

``detect_identity(os.environ)`` reads GitHub Actions, GitLab CI or a local run into an
:class:`~airlock.events.Identity`. ``agent_environment(os.environ, policy)`` is the environment to
start the agent with: :data:`SENSITIVE_CI_VARIABLES` are always withheld, plus what the policy's
``environment`` section removes.
"""

from airlock.ci.environment import (
    SENSITIVE_CI_VARIABLES,
    agent_environment,
    is_sensitive_variable,
    removed_names,
)
from airlock.ci.identity import Platform, detect_identity, detect_platform

__all__ = [
    "SENSITIVE_CI_VARIABLES",
    "Platform",
    "agent_environment",
    "detect_identity",
    "detect_platform",
    "is_sensitive_variable",
    "removed_names",
]
