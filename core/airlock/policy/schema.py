"""The published JSON Schema of ``airlock.yaml`` (committed as docs/policy.schema.json)."""

from __future__ import annotations

from typing import Any

from airlock.policy.model import Policy

__all__ = ["policy_json_schema"]


def policy_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the policy file, for editors and CI checks.

    The schema describes shape and enums; a few rules only the loader enforces (RE2 syntax,
    patterns that match the empty string, reserved rule ids, duplicates).
    """
    schema = Policy.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
    }
