"""Suite-wide fixtures: the same behaviour on a laptop and inside CI.

- The CI platform's variables are cleared for every test (a test that needs them sets them), so
  GitHub Actions or GitLab CI running this suite cannot change what it sees.
- Keys and config go to a per-test XDG_CONFIG_HOME, never the real home.
- httpx's default timeout for calls that name none is 60 s instead of 5 s: on a loaded machine
  (CI on two busy cores) the first request to a freshly started server can take longer than 5 s,
  and a test must fail on behaviour, not on the machine's speed. Every call that waits on
  purpose names its own timeout.
- In CI (CI=true), a skipped test fails the run: services are started by the tests themselves,
  so a skip means something is missing, and that must not pass silently.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx._config
import pytest
from tests.support.moto_server import moto_server  # noqa: F401 (shared fixture)
from tests.support.postgres import postgres_cluster  # noqa: F401 (shared fixture)

_DEFAULT_TIMEOUT = httpx._config.DEFAULT_TIMEOUT_CONFIG
_DEFAULT_TIMEOUT.connect = _DEFAULT_TIMEOUT.read = _DEFAULT_TIMEOUT.write = 60.0
_DEFAULT_TIMEOUT.pool = 60.0

_CLEARED_PREFIXES = ("GITHUB_", "ACTIONS_", "RUNNER_", "CI_", "GITLAB_", "AIRLOCK_")
_CLEARED_NAMES = ("CI", "GITLAB_CI", "GITHUB_ACTIONS")


@pytest.fixture(autouse=True)
def _clean_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    for name in list(os.environ):
        if name.startswith(_CLEARED_PREFIXES) or name in _CLEARED_NAMES:
            monkeypatch.delenv(name, raising=False)
    config_home: Path = tmp_path_factory.mktemp("xdg-config")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if skipped and exitstatus == 0:
        print(f"\nCI: {skipped} test(s) were skipped; in CI nothing may be skipped silently.")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
