"""The pydantic-free stand-in for DEFAULT_POLICY that `airlock run` uses without a policy."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from airlock.policy import DEFAULT_POLICY, Policy
from airlock.policy.default import DEFAULT_DIGEST, DefaultRunPolicy, default_run_policy

SECTIONS = ("capture", "mask", "environment", "sandbox")


def _plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


@pytest.mark.parametrize("section", SECTIONS)
def test_each_section_it_holds_is_the_models_defaults_field_by_field(section: str) -> None:
    # A field added to the model (or a default changed) fails here until the stand-in has it.
    model = getattr(DEFAULT_POLICY, section).model_dump()
    assert _plain(getattr(default_run_policy(), section)) == model
    assert model == getattr(Policy(), section).model_dump()


def test_the_rest_is_the_models_own_and_the_digest_is_policy_digest() -> None:
    stand_in = default_run_policy()
    assert stand_in.digest() == DEFAULT_DIGEST == Policy().digest() == DEFAULT_POLICY.digest()
    assert stand_in.gateways == DEFAULT_POLICY.gateways == ()
    assert stand_in.network is DEFAULT_POLICY.network is None
    assert set(vars(DefaultRunPolicy)) >= {*SECTIONS, "gateways", "network"}
    for name in Policy.model_fields.keys() - {*SECTIONS, "gateways", "network"}:
        assert getattr(stand_in, name) is getattr(DEFAULT_POLICY, name)  # looked up there
    assert stand_in.model_dump() == DEFAULT_POLICY.model_dump()


@pytest.mark.parametrize("name", ["PATH", "CI_JOB_TOKEN", "", "X*"])
def test_environment_removes_like_the_model(name: str) -> None:
    assert default_run_policy().environment.removes(name) == DEFAULT_POLICY.environment.removes(
        name
    )


def test_reading_it_loads_no_pydantic_until_a_part_it_does_not_hold_is_read() -> None:
    code = (
        "import sys\n"
        "from airlock.policy.default import default_run_policy\n"
        "p = default_run_policy()\n"
        "p.capture.exec, p.mask.env, p.environment.removes('X'), p.sandbox.mode, p.digest()\n"
        "print('pydantic' in sys.modules)\n"
        "p.approvals.backend\n"
        "print('pydantic' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


@pytest.mark.parametrize(
    "module", ["agent_gateways", "gateways", "guardrails", "model", "pin", "broker_config"]
)
def test_any_policy_module_can_be_imported_first(module: str) -> None:
    # The package imports its names lazily, so no module is guaranteed to load before another.
    code = f"import airlock.policy.{module}\nfrom airlock.policy import GatewayConfig, Policy"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _outcome(call: Any) -> tuple[str, str]:
    try:
        policy, source = call()
    except Exception as exc:  # the refusal itself is what is compared
        return type(exc).__name__, str(exc)
    return policy.digest(), repr(source.to_dict())


@pytest.mark.parametrize(
    ("path", "text", "pin"),
    [
        ("examples/policies/minimal.yaml", None, None),
        ("examples/policies/minimal.yaml", None, "0" * 64),  # a pin that does not match
        ("does/not/exist.yaml", None, None),
        (None, "capture: {exec: sometimes}\n", None),
        (None, "capture: {exec: off}\n", None),
        (None, "mask: {patterns: [{id: x, regex: ''}]}\n", None),
        (None, None, "0" * 64),  # a pin without a file
        (None, None, "not-a-pin"),
    ],
)
def test_run_takes_the_stand_in_only_when_no_policy_is_given(
    path: str | None, text: str | None, pin: str | None
) -> None:
    # Anything given (file, inline text, pin) goes through load_session_policy: same policy,
    # same refusal as every other command that reads a policy.
    from airlock.jobs.launch import RunOptions, _session_policy
    from airlock.policy.pin import load_session_policy

    file = Path(__file__).resolve().parents[2] / path if path else None
    options = RunOptions(sessions=Path("s"), policy=file, policy_text=text, policy_sha256=pin)
    fast = _outcome(lambda: _session_policy(options, {}))
    slow = _outcome(lambda: load_session_policy(file, text=text, pin=pin, environ={}))
    assert fast == slow


def test_run_without_any_policy_gets_the_stand_in_with_the_defaults_origin() -> None:
    from airlock.jobs.launch import RunOptions, _session_policy
    from airlock.policy.pin import load_session_policy

    policy, source = _session_policy(RunOptions(sessions=Path("s")), {})
    assert policy is default_run_policy()  # type: ignore[comparison-overlap]
    default, default_source = load_session_policy(None, environ={})
    assert default is DEFAULT_POLICY
    assert (policy.digest(), source) == (default.digest(), default_source)
