"""Fixtures for the provider tests: real PostgreSQL, a real moto (STS) server, GitHub's OpenAPI.

``github_openapi`` loads ``@octokit/openapi`` (generated/api.github.com.json). It is looked up in
``$AIRLOCK_OCTOKIT_OPENAPI`` (the JSON file), else ``.cache/npm-octokit`` in the repository root,
and installed there with ``npm install @octokit/openapi`` when missing (nothing goes into git).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.providers.pg_app import AppDatabase, create_app_database
from tests.support.moto_server import MotoServer, moto_server  # noqa: F401 (fixture)
from tests.support.postgres import PostgresCluster, postgres_cluster  # noqa: F401 (fixture)


@pytest.fixture(scope="session")
def app_db(postgres_cluster: PostgresCluster) -> AppDatabase:  # noqa: F811
    """The ``appdb`` database (see tests/providers/pg_app.py)."""
    return create_app_database(postgres_cluster)


class RecordingMoto:
    """A moto server whose request recorder shows what our code actually sent over HTTP."""

    def __init__(self, server: MotoServer) -> None:
        self.server = server

    @property
    def endpoint_url(self) -> str:
        return self.server.endpoint_url

    def _post(self, action: str) -> None:
        url = f"{self.endpoint_url}/moto-api/recorder/{action}"
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5):
            pass

    def start_recording(self) -> None:
        self._post("reset-recording")
        self._post("start-recording")

    def sent(self) -> list[dict[str, list[str]]]:
        """Each recorded request's form body (STS speaks the query protocol), parsed."""
        url = f"{self.endpoint_url}/moto-api/recorder/download-recording"
        with urllib.request.urlopen(url, timeout=5) as resp:
            lines = resp.read().decode().splitlines()
        bodies = []
        for line in lines:
            entry = json.loads(line)
            raw = entry["body"]
            body = base64.b64decode(raw).decode() if entry["body_encoded"] else raw
            bodies.append(urllib.parse.parse_qs(body))
        return bodies


@pytest.fixture(scope="session")
def sts_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecordingMoto]:
    """A dedicated moto server (its recorder writes to a temp file, not the working tree)."""
    recording = tmp_path_factory.mktemp("moto") / "recording.jsonl"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOTO_RECORDER_FILEPATH", str(recording))
        with MotoServer.start() as server:
            mp.delenv("MOTO_RECORDER_FILEPATH")
            yield RecordingMoto(server)


_REPO_ROOT = Path(__file__).resolve().parents[2]
_OCTOKIT_DIR = _REPO_ROOT / ".cache" / "npm-octokit"
_OCTOKIT_SPEC = "node_modules/@octokit/openapi/generated/api.github.com.json"


def _octokit_spec_path() -> Path:
    explicit = os.environ.get("AIRLOCK_OCTOKIT_OPENAPI")
    if explicit:
        return Path(explicit)
    path = _OCTOKIT_DIR / _OCTOKIT_SPEC
    if not path.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is needed to fetch @octokit/openapi (apt-get install -y npm)")
        _OCTOKIT_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent", "@octokit/openapi"],
            cwd=_OCTOKIT_DIR,
            check=True,
            timeout=300,
        )
    return path


@pytest.fixture(scope="session")
def github_openapi() -> Any:
    """GitHub's REST API description as an ``openapi_core.OpenAPI`` (spec validation off)."""
    from openapi_core import Config, OpenAPI

    spec = json.loads(_octokit_spec_path().read_text())
    return OpenAPI.from_dict(spec, config=Config(spec_validator_cls=None))
