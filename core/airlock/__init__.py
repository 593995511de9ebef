"""Airlock: scoped credentials, audit capture, approval gates and tamper-evident logs for AI
coding agents in CI/CD."""

from airlock.errors import AirlockError, ExitCode

__version__ = "0.1.0"
__all__ = ["AirlockError", "ExitCode", "__version__"]
