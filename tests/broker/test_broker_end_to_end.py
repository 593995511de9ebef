"""The whole credential path as a job sees it, with real processes and sockets:

GitHub's token endpoint (the local issuer) → `airlock credentials` → `airlock broker serve`
(uvicorn, SQLite) → GITHUB_ENV with every value masked first → `airlock run --broker` masks the
issued value and has checkpoints witnessed → the broker's checkpoints catch a log that was
rewritten and re-signed with the local key → `airlock credentials --revoke`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from tests.broker.conftest import AUDIENCE, STATIC_VALUE, broker_yaml
from tests.support.broker_server import start_broker_process
from tests.support.oidc_issuer import OIDCIssuer

from airlock.audit import SessionWriter, iter_events, load_signing_key, verify_session
from airlock.broker.witness import check_witnessed, parse_public_keys
from airlock.brokerclient import BrokerClient
from airlock.errors import VerificationFailed

AIRLOCK = str(Path(sys.executable).parent / "airlock")


@pytest.fixture
def broker_url(issuer: OIDCIssuer, tmp_path: Path) -> Iterator[str]:
    config = tmp_path / "broker.yaml"
    config.write_text(broker_yaml(issuer.url, f"sqlite:///{tmp_path / 'state.db'}"))
    serve = ["broker", "serve", "--config", str(config)]
    proc, url = start_broker_process(serve, tmp_path / "broker-config", 30)
    yield url
    proc.terminate()
    _, stderr = proc.communicate(timeout=20)
    assert STATIC_VALUE.encode() not in stderr  # the broker's log never holds a credential


@pytest.fixture
def job_env(issuer: OIDCIssuer, tmp_path: Path) -> dict[str, str]:
    def token_endpoint(request: Request) -> Response:
        if request.headers.get("authorization") != "Bearer request-token":
            return Response(status_code=401)
        claims = issuer.github_claims(request.query_params["audience"])
        return JSONResponse({"value": issuer.mint(claims)})

    issuer.routes["/github-token"] = token_endpoint
    (tmp_path / "github_env").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "ACTIONS_", "CI_"))}
    env.update(
        GITHUB_ACTIONS="true",
        ACTIONS_ID_TOKEN_REQUEST_URL=f"{issuer.url}/github-token?api-version=2.0",
        ACTIONS_ID_TOKEN_REQUEST_TOKEN="request-token",
        GITHUB_ENV=str(tmp_path / "github_env"),
        AIRLOCK_STATE_DIR=str(tmp_path / "state"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
    )
    return env


def _airlock(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([AIRLOCK, *args], env=env, capture_output=True, timeout=60, check=False)


def test_credentials_run_witness_revoke(
    broker_url: str, job_env: dict[str, str], tmp_path: Path
) -> None:
    got = _airlock(
        job_env, "credentials", "--broker", broker_url, "--audience", AUDIENCE, "--grant", "deploy"
    )
    assert got.returncode == 0, got.stderr
    assert f"::add-mask::{STATIC_VALUE}".encode() in got.stdout
    assert STATIC_VALUE in (tmp_path / "github_env").read_text()
    state = tmp_path / "state" / "job.json"
    assert oct(state.stat().st_mode & 0o777) == "0o600"

    # The next step gets the value from GITHUB_ENV, as GitHub Actions would.
    run_env = {**job_env, "DEPLOY_KEY": STATIC_VALUE}
    sessions = tmp_path / "sessions"
    ran = _airlock(
        run_env, "run", "--broker", broker_url, "--sessions", str(sessions), "--",
        "sh", "-c", 'echo "deploying with $DEPLOY_KEY"',
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert STATIC_VALUE.encode() not in ran.stdout
    assert b"[MASKED:credential:deploy]" in ran.stdout
    session = next(sessions.iterdir())
    events = list(iter_events(session))
    issued = [e["data"] for e in events if e["type"] == "credential.issued"]
    assert [(i["grant"], i["name"]) for i in issued] == [("deploy", "DEPLOY_KEY")]
    assert STATIC_VALUE.encode() not in (session / "events.jsonl").read_bytes()

    client = BrokerClient(broker_url)
    try:
        witnessed = client.checkpoints(session.name)
        keys = parse_public_keys(client.public_keys())
    finally:
        client.close()
    assert witnessed, "the session's end was witnessed"
    assert witnessed[-1]["seq"] >= events[-2]["seq"]  # the final checkpoint covers session.end
    assert check_witnessed(session, session.name, witnessed, keys) == len(witnessed)
    manifest = json.loads((session / "manifest.json").read_text())
    assert [c["seq"] for c in manifest["checkpoints"]] == [c["seq"] for c in witnessed]
    verified = _airlock(run_env, "verify", "--broker", broker_url, str(session))
    assert verified.returncode == 0, verified.stderr

    # An attacker with the local key rewrites the log and re-signs it: locally it verifies,
    # against the broker's checkpoints it does not.
    forged_dir = tmp_path / "forged"
    writer = SessionWriter.create(forged_dir, session_id=session.name)
    for event in events:
        data = event["data"]
        if event["type"] == "output":
            data = {**data, "text": "nothing to see here\n"}
        writer.append(event["type"], data)
    key = load_signing_key(None)
    writer.seal(key, exit_code=0)
    forged = forged_dir / session.name
    verify_session(forged, {key.key_id: key.public_key})
    with pytest.raises(VerificationFailed) as caught:
        check_witnessed(forged, session.name, witnessed, keys)
    assert caught.value.kind == "checkpoint-mismatch"
    public = tmp_path / "forger.pem"
    public.write_bytes(key.public_pem())
    refused = _airlock(
        run_env, "verify", "--broker", broker_url, "--key-file", str(public), str(forged)
    )
    assert refused.returncode == 84
    assert b"differs from what the broker witnessed" in refused.stderr

    # A session the broker never saw (here: run without --broker) is not vouched for.
    unseen = tmp_path / "unseen"
    assert _airlock(run_env, "run", "--sessions", str(unseen), "--", "true").returncode == 0
    refused = _airlock(run_env, "verify", "--broker", broker_url, str(next(unseen.iterdir())))
    assert refused.returncode == 84
    assert b"witnessed no checkpoint" in refused.stderr

    revoked = _airlock(job_env, "credentials", "--revoke")
    assert revoked.returncode == 0
    assert b"revoked 1 lease" in revoked.stderr
    assert not state.exists()
    assert json.loads(httpx.get(f"{broker_url}/healthz").text) == {"status": "ok"}
