"""`airlock broker explain|check|schema`: what an operator sees when a job is refused."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from tests.support.oidc_issuer import github_claims

from airlock._commands import broker
from airlock.errors import AirlockError, ExitCode

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "broker" / "broker.yaml"
GITHUB = "https://token.actions.githubusercontent.com"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run `airlock broker …` the way airlock._cli.main does: errors caught once, as codes."""
    parser = argparse.ArgumentParser(prog="airlock")
    broker.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["broker", *argv])
    try:
        code = args.func(args)
    except AirlockError as exc:
        print(f"airlock: error: {exc.explain()}")
        code = int(exc.exit_code)
    out = capsys.readouterr()
    return code, out.out, out.err


def claims_file(tmp_path: Path, **overrides: Any) -> str:
    path = tmp_path / "claims.json"
    path.write_text(json.dumps(github_claims(GITHUB, "https://airlock.acme.internal", **overrides)))
    return str(path)


def test_explain_allowed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        [
            "explain",
            "--config",
            str(EXAMPLE),
            "--claims",
            claims_file(tmp_path),
            "--grant",
            "appdb-readwrite",
            "--grant",
            "deploy-aws",
        ],
        capsys,
    )
    assert code == ExitCode.OK
    assert "+ rule api-main (allow): matches; its ceiling allows: appdb-readwrite" in out
    assert "decision: ALLOWED by rule api-main: appdb-readwrite" in out
    assert "not granted (outside the rule's ceiling): deploy-aws" in out


def test_explain_says_exactly_why_each_rule_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    claims = claims_file(tmp_path, ref="refs/heads/dev", event_name="pull_request_target")
    code, out, _ = run(
        ["explain", "--config", str(EXAMPLE), "--claims", claims, "--grant", "appdb-readwrite"],
        capsys,
    )
    assert code == ExitCode.DENIED
    assert "- rule api-main (allow): does not match" in out
    assert "claim ref = 'refs/heads/dev' is not 'refs/heads/main'" in out
    assert "sensitive trigger 'pull_request_target' is refused unless the rule lists it" in out
    assert "- rule api-release (allow): does not match" in out
    assert "claim environment is absent" in out
    assert "- rule no-sandbox (deny): does not apply" in out
    assert "decision: DENIED: no rule matches this job (closest: rule 'api-main'" in out


def test_explain_deny_rule_applies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    claims = claims_file(tmp_path, repository_owner="acme-sandbox")
    code, out, _ = run(
        ["explain", "--config", str(EXAMPLE), "--claims", claims, "--grant", "appdb-readwrite"],
        capsys,
    )
    assert code == ExitCode.DENIED
    assert "! rule no-sandbox (deny): applies: refuses the request" in out
    assert "decision: DENIED: refused by deny rule 'no-sandbox'" in out


def test_explain_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        [
            "explain",
            "--config",
            str(EXAMPLE),
            "--claims",
            claims_file(tmp_path),
            "--grant",
            "gh-contents-write",
            "--json",
        ],
        capsys,
    )
    report = json.loads(out)
    assert code == ExitCode.OK
    assert report["allowed"] is True
    assert report["grants"] == ["gh-contents-write"]
    assert [r["id"] for r in report["rules"]] == ["api-main", "api-release", "no-sandbox"]
    assert report["rules"][1]["mismatches"][0]["claim"] == "ref"


def test_explain_takes_flags_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRLOCK_BROKER_CONFIG", str(EXAMPLE))
    monkeypatch.setenv("AIRLOCK_CLAIMS", claims_file(tmp_path))
    monkeypatch.setenv("AIRLOCK_GRANT", "appdb-readwrite,gh-contents-write")
    code, out, _ = run(["explain"], capsys)
    assert code == ExitCode.OK
    assert "ALLOWED by rule api-main: appdb-readwrite, gh-contents-write" in out


def test_explain_needs_a_known_issuer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    claims = claims_file(tmp_path, iss="https://elsewhere.test")
    code, out, _ = run(
        ["explain", "--config", str(EXAMPLE), "--claims", claims, "--grant", "x"], capsys
    )
    assert code == ExitCode.USAGE
    assert "--issuer" in out


def test_explain_bad_claims_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "claims.json"
    bad.write_text("[1, 2]")
    code, out, _ = run(
        ["explain", "--config", str(EXAMPLE), "--claims", str(bad), "--grant", "x"], capsys
    )
    assert code == ExitCode.USAGE
    assert "JSON object of claims" in out


def test_explain_malformed_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "broker.yaml"
    unbound = EXAMPLE.read_text().replace(
        '      repository_id: "123456"\n      repository_owner_id: "7890"\n', "", 1
    )
    config.write_text(unbound)
    code, out, _ = run(
        ["explain", "--config", str(config), "--claims", claims_file(tmp_path), "--grant", "x"],
        capsys,
    )
    assert code == ExitCode.USAGE
    assert "rules[0].claims (line" in out
    assert "binds no immutable id" in out


def test_check_and_schema(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["check", "--config", str(EXAMPLE)], capsys)
    assert code == ExitCode.OK
    assert "ok: 2 issuer(s), 4 grant(s), 4 rule(s)" in out
    code, out, _ = run(["schema"], capsys)
    assert code == ExitCode.OK
    assert json.loads(out) == json.loads((ROOT / "docs" / "broker-config.schema.json").read_text())


def test_serve_refuses_a_config_whose_providers_are_not_configured(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The example names a GitHub App provider without its app id and key: refused before
    # anything listens, with the field that is missing.
    code, out, _ = run(["serve", "--config", str(EXAMPLE)], capsys)
    assert code == ExitCode.USAGE
    assert "invalid github provider config: app_id: Field required" in out


def test_a_refused_serve_leaves_nothing_on_disk(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the example's state is the default, relative sqlite file
    code, _, _ = run(["serve", "--config", str(EXAMPLE)], capsys)
    assert code == ExitCode.USAGE
    assert list(tmp_path.iterdir()) == []
