"""The YAML users meet: no expression inside a script, schemas, docs that list every input,
pinned install requirements, and the shape that makes finalization run after failures."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.actions.helpers import REPO

CHECK_JSONSCHEMA = Path(sys.executable).with_name("check-jsonschema")
ACTIONS = sorted([REPO / "action.yml", *REPO.glob("actions/*/action.yml")])
WORKFLOWS = sorted(
    [*REPO.glob("examples/github/*.yml"), *REPO.glob("tests/actions/workflows/*.yml")]
)
GITLAB_FILES = sorted(
    [
        *REPO.glob("gitlab-templates/*.yml"),
        REPO / "examples/gitlab/.gitlab-ci.yml",
        *REPO.glob("tests/gitlab/pipelines/*.yml"),
    ]
)
GITHUB_DOC = REPO / "docs/github-actions.md"
GITLAB_DOC = REPO / "docs/gitlab-ci.md"
PART_NAMES = {"credentials", "run", "gate", "archive", "verify", "session"}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def gitlab_documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def steps_of(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    runs = doc.get("runs", {})
    yield from runs.get("steps", []) if isinstance(runs, dict) else []
    for job in (doc.get("jobs") or {}).values():
        yield from job.get("steps", [])


def test_every_part_exists() -> None:
    assert {p.parent.name for p in ACTIONS if p.parent != REPO} == PART_NAMES
    assert len(WORKFLOWS) >= 3 and len(GITLAB_FILES) >= 2


@pytest.mark.parametrize("path", ACTIONS + WORKFLOWS, ids=rel)
def test_no_expression_inside_a_run_block(path: Path) -> None:
    runs = [step["run"] for step in steps_of(load(path)) if "run" in step]
    assert all("${{" not in script for script in runs), rel(path)
    # the same rule, read as text: a `run: |` block may not hold `${{` on any of its lines
    in_run, indent, offenders = False, 0, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.lstrip()
        if in_run and stripped and len(line) - len(stripped) <= indent:
            in_run = False
        if re.match(r"-?\s*run:", stripped):
            in_run, indent = True, len(line) - len(stripped)
        if in_run and "${{" in line:
            offenders.append(number)
    assert offenders == [], f"{rel(path)}: ${{{{ }}}} inside run: at lines {offenders}"


def gitlab_scripts(doc: dict[str, Any]) -> Iterator[str]:
    for value in doc.values():
        if not isinstance(value, dict | list):
            continue
        items = value if isinstance(value, list) else [value]
        for item in items:
            if not isinstance(item, dict):
                yield from (line for line in ([item] if isinstance(item, str) else []))
                continue
            for key in ("script", "before_script", "after_script"):
                for line in item.get(key) or []:
                    yield from (line if isinstance(line, list) else [line])


@pytest.mark.parametrize("path", GITLAB_FILES, ids=rel)
def test_no_input_interpolation_inside_a_script(path: Path) -> None:
    scripts = [line for doc in gitlab_documents(path) for line in gitlab_scripts(doc)]
    if path.parent.name == "gitlab-templates":
        assert scripts, rel(path)
    assert [s for s in scripts if "$[[" in s] == []


def check_jsonschema(
    schema: str, *paths: Path, network: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = [str(CHECK_JSONSCHEMA), "--builtin-schema", schema, *map(str, paths)]
    if not network:
        argv = ["unshare", "--net", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_actions_and_workflows_validate_against_their_schemas() -> None:
    done = check_jsonschema("vendor.github-actions", *ACTIONS)
    assert done.returncode == 0, done.stdout + done.stderr
    done = check_jsonschema("vendor.github-workflows", *WORKFLOWS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_gitlab_files_validate_document_by_document(tmp_path: Path) -> None:
    # A component file is two YAML documents (spec header, jobs); the schema takes one at a time.
    import json

    parts = []
    for path in GITLAB_FILES:
        for index, doc in enumerate(gitlab_documents(path)):
            part = tmp_path / f"{path.stem}-{index}.json"
            part.write_text(json.dumps(doc))
            parts.append(part)
    done = check_jsonschema("vendor.gitlab-ci", *parts)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_bites_and_needs_no_network(tmp_path: Path) -> None:
    broken = tmp_path / "action.yml"
    broken.write_text("name: x\ndescription: y\nruns:\n  using: composite\n  stepz: []\n")
    done = check_jsonschema("vendor.github-actions", broken, network=False)
    assert done.returncode == 1 and "stepz" in done.stdout + done.stderr
    done = check_jsonschema("vendor.github-actions", REPO / "action.yml", network=False)
    assert done.returncode == 0, done.stdout + done.stderr


def documented(doc: Path, kind: str, target: str) -> set[str]:
    """Names in the first column of the table under '### {kind} of `{target}`'."""
    text = doc.read_text()
    match = re.search(rf"^##+ {kind} of `{re.escape(target)}`\n(.*?)(?=^#)", text, re.M | re.S)
    assert match, f"{doc.name} has no section '### {kind} of `{target}`'"
    return set(re.findall(r"^\| `([a-z0-9-]+)` \|", match.group(1), re.M))


@pytest.mark.parametrize("path", ACTIONS, ids=rel)
def test_docs_list_every_input_and_output_and_nothing_else(path: Path) -> None:
    action = load(path)
    target = rel(path) if path.parent == REPO else rel(path.parent)
    assert documented(GITHUB_DOC, "Inputs", target) == set(action.get("inputs") or {})
    outputs = set(action.get("outputs") or {})
    if outputs:
        assert documented(GITHUB_DOC, "Outputs", target) == outputs
    else:
        assert f"### Outputs of `{target}`\n\nNone" in GITHUB_DOC.read_text()


def test_gitlab_docs_list_every_input_and_nothing_else() -> None:
    spec = gitlab_documents(REPO / "gitlab-templates/airlock.yml")[0]["spec"]["inputs"]
    assert documented(GITLAB_DOC, "Inputs", "gitlab-templates/airlock.yml") == set(spec)
    assert all(value.get("description") for value in spec.values())


def test_every_action_input_is_described() -> None:
    for path in ACTIONS:
        for name, spec in (load(path).get("inputs") or {}).items():
            assert spec.get("description"), f"{rel(path)}: input {name}"


def test_javascript_actions_finalize_after_failure_and_cancellation() -> None:
    for path in (REPO / "action.yml", REPO / "actions/session/action.yml"):
        runs = load(path)["runs"]
        assert runs["using"] in {"node20", "node24"}
        assert runs["post-if"] == "always()"
        for entry in (runs["main"], runs["post"]):
            script = path.parent / entry
            done = subprocess.run(["node", "--check", str(script)], capture_output=True, text=True)
            assert done.returncode == 0, done.stderr


def test_gitlab_template_shape() -> None:
    spec_doc, jobs = gitlab_documents(REPO / "gitlab-templates/airlock.yml")
    inputs = spec_doc["spec"]["inputs"]
    assert inputs["fail-mode"]["options"] == ["closed", "open"]
    assert inputs["grants"]["type"] == "array" and inputs["retention-days"]["type"] == "number"
    assert "regex" in inputs["broker-url"] and "regex" in inputs["gate-environment"]
    run = jobs[".airlock-run"]
    assert run["id_tokens"]["AIRLOCK_ID_TOKEN"]["aud"] == "$[[ inputs.audience ]]"
    assert any("ci finalize" in line for line in run["after_script"])
    assert run["artifacts"]["when"] == "always"
    assert run["artifacts"]["reports"]["dotenv"] == "airlock/airlock.env"
    gate = jobs[".airlock-gate"]
    assert gate["when"] == "manual" and gate["allow_failure"] is False
    assert gate["environment"]["name"] == "$[[ inputs.gate-environment ]]"
    assert {".airlock-run", ".airlock-archive", ".airlock-gate"} <= set(jobs)


def test_install_requirements_are_pinned_and_cover_the_runtime_dependencies() -> None:
    lines = [
        line
        for line in (REPO / "actions/_shim/requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+\-]+", line) for line in lines)
    pinned = {re.split("==", line)[0].lower().replace("_", "-") for line in lines}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"]) + list(project["optional-dependencies"]["fast"])
    names = {re.split(r"[<>=\[; ]", dep)[0].lower().replace("_", "-") for dep in wanted}
    assert names - pinned == set()


def test_example_policy_is_valid() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "airlock._cli", "policy", "check", "examples/github/airlock.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "core")},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
