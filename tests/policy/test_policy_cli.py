"""`airlock policy check` and `airlock policy schema`, run as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from airlock.errors import ExitCode
from airlock.policy import policy_json_schema

ROOT = Path(__file__).resolve().parents[2]


def airlock(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airlock._cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
        timeout=60,
    )


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_check_valid_files(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", "capture: {exec: best_effort}\n")
    done = airlock("policy", "check", str(good), str(ROOT / "examples/policies/full.yaml"))
    assert done.returncode == 0
    assert done.stdout.splitlines() == [f"ok: {good}", f"ok: {ROOT}/examples/policies/full.yaml"]


def test_check_lists_every_problem_of_every_file_and_exits_usage(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.yaml", "capture:\n  exec: sometimes\nmask: {paterns: []}\n")
    good = write(tmp_path, "good.yaml", "{}\n")
    missing = tmp_path / "missing.yaml"
    done = airlock("policy", "check", str(bad), str(good), str(missing))
    assert done.returncode == ExitCode.USAGE
    assert done.stdout.splitlines() == [
        f"{bad}: capture.exec: must be one of: required, best_effort, off (line 2)",
        f"{bad}: mask.paterns: unknown key 'paterns'; did you mean 'patterns'? (line 3)",
        f"ok: {good}",
        f"{missing}: cannot read the policy file (No such file or directory)",
    ]


def test_check_github_annotations(tmp_path: Path) -> None:
    bad = write(tmp_path, "a,b.yaml", "\ncapture: {pty: sometimes}\n")
    done = airlock("policy", "check", str(bad), env={"AIRLOCK_POLICY_FORMAT": "github"})
    assert done.returncode == ExitCode.USAGE
    escaped = str(bad).replace(",", "%2C")
    assert done.stdout == (
        f"::error file={escaped},line=2::capture.pty: must be one of: auto, always, never\n"
    )


def test_check_github_annotation_of_a_yaml_syntax_error(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.yaml", "capture:\n  exec: required\n pty: auto\n")
    done = airlock("policy", "check", "--format", "github", str(bad))
    assert done.returncode == ExitCode.USAGE
    assert done.stdout.startswith(f"::error file={bad},line=3,col=")
    assert "::YAML syntax error: " in done.stdout


def test_check_without_a_file_is_a_usage_error() -> None:
    done = airlock("policy", "check")
    assert done.returncode == ExitCode.USAGE
    assert "FILE" in done.stderr


def test_schema_prints_the_published_schema() -> None:
    done = airlock("policy", "schema")
    assert done.returncode == 0
    assert json.loads(done.stdout) == policy_json_schema()
    assert done.stdout == (ROOT / "docs" / "policy.schema.json").read_text(encoding="utf-8")
