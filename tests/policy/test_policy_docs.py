"""The published schema, the reference doc and the example policies stay in step with the model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from airlock.policy import DEFAULT_POLICY, Policy, load_policy, policy_json_schema

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "docs" / "policy.schema.json"
DOC_FILE = ROOT / "docs" / "policy.md"
EXAMPLES = sorted((ROOT / "examples" / "policies").glob("*.yaml"))
REGENERATE = ".venv/bin/airlock policy schema > docs/policy.schema.json"


def _field_names(model: type[BaseModel]) -> set[str]:
    names: set[str] = set()
    for name, info in model.model_fields.items():
        names.add(info.alias or name)  # the key as written in YAML
        for candidate in (info.annotation, *getattr(info.annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                names |= _field_names(candidate)
    return names


def test_committed_schema_matches_the_model() -> None:
    committed = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert committed == policy_json_schema(), (
        f"docs/policy.schema.json is out of date; regenerate it with: {REGENERATE}"
    )


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(policy_json_schema())


def test_every_field_is_documented() -> None:
    doc = DOC_FILE.read_text(encoding="utf-8")
    fields = _field_names(Policy)
    assert {"exec", "regex", "keep_masked_vars", "max_len"} <= fields  # the walk goes deep
    missing = sorted(name for name in fields if not re.search(rf"`{re.escape(name)}`", doc))
    assert missing == [], f"docs/policy.md does not mention: {missing}"


def test_every_enum_value_is_documented() -> None:
    doc = DOC_FILE.read_text(encoding="utf-8")
    values = {"required", "best_effort", "off", "auto", "always", "never", "none", "hmac"}
    assert sorted(v for v in values if f"`{v}`" not in doc) == []


def test_there_is_a_minimal_and_a_full_example() -> None:
    assert [p.name for p in EXAMPLES] == ["full.yaml", "minimal.yaml"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_policies_load_and_match_the_schema(path: Path) -> None:
    policy = load_policy(path)
    assert policy != DEFAULT_POLICY
    jsonschema.validate(yaml.safe_load(path.read_text(encoding="utf-8")), policy_json_schema())


def test_full_example_sets_every_key() -> None:
    data = yaml.safe_load((ROOT / "examples" / "policies" / "full.yaml").read_text("utf-8"))
    written = _keys(data)
    assert _field_names(Policy) - written == set()


def _keys(node: object) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _keys(v)}
    if isinstance(node, list):
        return {k for item in node for k in _keys(item)}
    return set()


def test_schema_refuses_what_the_loader_refuses() -> None:
    schema = policy_json_schema()
    for bad in (
        {"capture": {"exec": "sometimes"}},
        {"mask": {"paterns": []}},
        {"environment": {"remove": ["A*B"]}},
        {"mask": {"env": ["1X"]}},
        {"version": 2},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
