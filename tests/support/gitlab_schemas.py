"""GitLab's REST answers and webhook payloads as JSON Schema, for the fake GitLab's contract.

GitLab publishes no OpenAPI description on npm or PyPI (its own ``openapi_v2.yaml`` lives only
in the GitLab repository). The closest published description is ``@gitbeaker/core`` on npm:
TypeScript types for every REST answer and webhook payload. ``ts-json-schema-generator`` (npm)
turns the ones the broker relies on into JSON Schema, once per checkout, into
``.cache/npm-gitlab-types`` (nothing goes into git). No schema is written by hand.

Requests have no published description there (gitbeaker types method arguments, not bodies):
the fake checks them against nothing but its own routes.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest

_ROOT = Path(__file__).resolve().parents[2]
_DIR = _ROOT / ".cache" / "npm-gitlab-types"
_PACKAGES = ("@gitbeaker/core@43.8.0", "ts-json-schema-generator@2.9.0")
_OUT = _DIR / "gitlab-schemas-43.8.0.json"
# Our name → the gitbeaker type it stands for.
TYPES = {
    "merge_request": "ExpandedMergeRequestSchema",
    "note": "MergeRequestNoteSchema",
    "member": "MemberSchema",
    "user": "UserSchema",
    "note_event": "WebhookMergeRequestNoteEventSchema",
}


@functools.cache
def gitlab_schemas() -> dict[str, Any]:
    """The generated JSON Schema document (``definitions`` keyed by our names)."""
    if not _OUT.exists():
        _generate()
    doc: dict[str, Any] = json.loads(_OUT.read_text())
    return doc


def validate(name: str, value: Any) -> list[str]:
    """Why ``value`` does not fit GitLab's type ``name`` (empty when it does)."""
    doc = gitlab_schemas()
    schema = {**doc, "$ref": f"#/definitions/{name}"}
    validator = jsonschema.Draft7Validator(schema)
    return [f"{list(e.absolute_path)}: {e.message[:160]}" for e in validator.iter_errors(value)][:5]


def instance(name: str, **fields: Any) -> dict[str, Any]:
    """A value of type ``name`` with every required field (filled from the schema) and
    ``fields`` laid over it: what a full GitLab answer looks like, with the test's data."""
    doc = gitlab_schemas()
    base = _fill(doc, doc["definitions"][name])
    assert isinstance(base, dict)
    return _merge(base, fields)


def _fill(doc: dict[str, Any], schema: dict[str, Any]) -> Any:
    if "$ref" in schema:
        return _fill(doc, doc["definitions"][schema["$ref"].rsplit("/", 1)[-1]])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return _fill(doc, schema[key][0])
    if "allOf" in schema:
        out: dict[str, Any] = {}
        for part in schema["allOf"]:
            out.update(_fill(doc, part))
        return out
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "object")
    kind = next((k for k in kind if k != "null"), "null") if isinstance(kind, list) else kind
    if kind == "object":
        props = schema.get("properties", {})
        return {k: _fill(doc, props.get(k, {})) for k in schema.get("required", ())}
    return {"array": [], "string": "x", "number": 1, "integer": 1, "boolean": False}.get(kind)


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in over.items()}}
    return over


def _generate() -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is needed for GitLab's types (apt-get install -y npm)")
    _DIR.mkdir(parents=True, exist_ok=True)
    if not (_DIR / "node_modules" / "@gitbeaker" / "core").exists():
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent", *_PACKAGES],
            cwd=_DIR,
            check=True,
            timeout=300,
        )
    (_DIR / "tsconfig.json").write_text(
        json.dumps({"compilerOptions": {"strict": True, "skipLibCheck": True}})
    )
    imports = ", ".join(sorted(set(TYPES.values())))
    aliases = "".join(f"export type {name} = {t};\n" for name, t in TYPES.items())
    (_DIR / "gitlab.ts").write_text(
        f'import type {{ {imports} }} from "@gitbeaker/core";\n{aliases}'
    )
    generator = _DIR / "node_modules" / ".bin" / "ts-json-schema-generator"
    tmp = _OUT.with_suffix(".tmp")
    subprocess.run(
        [str(generator), "--path", "gitlab.ts", "--tsconfig", "tsconfig.json", "--type", "*",
         "--no-type-check", "-o", str(tmp)],
        cwd=_DIR, check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    tmp.replace(_OUT)
