"""`airlock run` without a broker does not pay for the broker's HTTP client at start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from airlock.policy.default import DEFAULT_DIGEST


def _loaded_after(code: str, modules: list[str]) -> list[str]:
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_run_imports_leave_httpx_until_a_broker_is_used() -> None:
    code = (
        "import airlock.jobs.run, airlock.jobs.launch\n"
        "from airlock.brokerclient import default_state_dir, load_job_state\n"
        "load_job_state(default_state_dir())"
    )
    assert _loaded_after(code, ["httpx"]) == []
    assert _loaded_after(code + "\nfrom airlock.brokerclient import BrokerClient", ["httpx"]) == [
        "httpx"
    ]


def test_identity_and_strace_probe_start_before_the_policy_package_loads() -> None:
    # `airlock run` starts git and the strace probe, then reads the policy while they run.
    code = "import airlock.ci, airlock.capture.tracer"
    assert _loaded_after(code, ["pydantic", "airlock.policy"]) == []


def test_run_command_module_leaves_the_policy_package_to_run_command() -> None:
    # `airlock run` imports jobs.launch first: if that loaded pydantic, git and the strace
    # probe would start only after it (they are started inside run_command).
    code = "import airlock._commands.run, airlock.jobs.launch"
    assert _loaded_after(code, ["pydantic", "airlock.policy", "cryptography"]) == []


def test_airlock_run_without_a_policy_reaches_run_command_before_pydantic() -> None:
    code = (
        "import sys\n"
        "import airlock.jobs.launch as launch\n"
        "def stop(*args, **kwargs):\n"
        "    print('pydantic' in sys.modules, 'airlock.policy' in sys.modules)\n"
        "    raise SystemExit(0)\n"
        "launch.run_command = stop\n"
        "from airlock._cli import main\n"
        "main(['run', '--', 'true'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_airlock_run_without_a_policy_never_loads_pydantic_or_the_sandbox(tmp_path: Path) -> None:
    # The whole run (session, seal): the defaults come from airlock.policy.default; the
    # sandbox (off by default) is not loaded either.
    code = (
        "import atexit, sys\n"
        "late = ('pydantic', 'airlock.sandbox.runtime', 'airlock.policy.model')\n"
        "atexit.register(lambda: print(any(m in sys.modules for m in late), file=sys.stderr))\n"
        "from airlock._cli import main\n"
        f"sys.exit(main(['run', '--quiet', '--sessions', {str(tmp_path)!r}, '--', 'true']))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "AIRLOCK_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert (out.returncode, out.stderr.split()[-1:]) == (0, ["False"])
    (session,) = tmp_path.iterdir()
    first = json.loads((session / "events.jsonl").read_text().splitlines()[0])
    assert first["data"]["policy"]["sha256"] == DEFAULT_DIGEST
    assert first["data"]["policy"]["origin"] == "default"
