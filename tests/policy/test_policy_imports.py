"""Importing the policy package loads only what a session without a policy file needs."""

from __future__ import annotations

import subprocess
import sys


def _loaded_after(code: str, modules: list[str]) -> list[str]:
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_policy_import_leaves_yaml_until_a_file_is_read() -> None:
    assert _loaded_after("import airlock.policy", ["yaml"]) == []
    code = "import airlock.policy\nairlock.policy.parse_policy('version: 1\\n')"
    assert _loaded_after(code, ["yaml"]) == ["yaml"]


def test_default_policy_builds_no_schema() -> None:
    # `airlock run` without --policy: building the nested models' schemas is start-up time.
    code = (
        "from airlock.policy import DEFAULT_POLICY, Policy\n"
        "from airlock.policy.gateways import PostgresGatewayConfig\n"
        "assert DEFAULT_POLICY.digest().startswith('sha256:')\n"
        "print(Policy.__pydantic_complete__, PostgresGatewayConfig.__pydantic_complete__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
