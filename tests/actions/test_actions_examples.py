"""The example workflows of examples/github, run by act on the host.

Only what points outside this machine is rewritten: `uses: acme/airlock…@v0.1.0` becomes the
local checkout, the Node/npm setup steps and the hosted agent (Claude Code) become the demo
agent (examples/demo_agent.py), the broker and the S3 bucket become a local broker (with a
local OIDC issuer) and moto. The policy, the inputs and the step structure are the examples' own.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from tests.actions.helpers import REPO, SECRET, commit_all, run_act, running_broker
from tests.broker.conftest import AUDIENCE, STATIC_VALUE, broker_yaml
from tests.support.moto_server import MotoServer
from tests.support.oidc_issuer import OIDCIssuer

pytestmark = pytest.mark.service

APPDB_PASSWORD = "appdb-password-for-tests-77"
DEMO_AGENT = 'DEMO_API_KEY="$ANTHROPIC_API_KEY" python3 examples/demo_agent.py; echo "task: $TASK"'


def local_uses(uses: str) -> str:
    match = re.fullmatch(r"acme/airlock(/actions/[a-z]+)?@v[0-9.]+", uses)
    return f".{match.group(1) or '/'}" if match else uses


def rewrite_step(step: dict[str, Any]) -> dict[str, Any] | None:
    uses = step.get("uses", "")
    if uses.startswith("actions/setup-node") or "npm install" in step.get("run", ""):
        return None
    if uses.startswith("anthropics/"):
        return {"uses": "./tests/actions/agent-action", "with": {"task": "fix the failing test"}}
    step = {**step, "uses": local_uses(uses)} if uses else dict(step)
    with_ = dict(step.get("with") or {})
    if "claude" in str(with_.get("command", "")):
        with_["command"] = DEMO_AGENT
    if "broker-url" in with_:
        with_.update({"broker-url": "${{ env.BROKER_URL }}", "audience": AUDIENCE})
        with_["grants"] = "deploy"
    if with_:
        step["with"] = with_
    env = dict(step.get("env") or {})
    if "ANTHROPIC_API_KEY" in env:
        env["ANTHROPIC_API_KEY"] = "${{ secrets.DEMO_SECRET }}"
    if "PGUSER_UPSTREAM" in env:
        env.update(PGUSER_UPSTREAM="app_agent", PGPASSWORD_UPSTREAM=APPDB_PASSWORD)
    if env:
        step["env"] = env
    return step


def rewrite(workflow: dict[Any, Any]) -> dict[Any, Any]:
    if True in workflow:  # YAML 1.1 reads the key `on` as a boolean
        workflow = {("on" if k is True else k): v for k, v in workflow.items()}
    for job in workflow["jobs"].values():
        job["steps"] = [s for s in map(rewrite_step, job["steps"]) if s is not None]
    return workflow


@pytest.fixture
def local_services(tmp_path: Path, moto_server: MotoServer) -> Iterator[dict[str, str]]:
    s3 = moto_server.client("s3")
    if "acme-audit" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket="acme-audit", ObjectLockEnabledForBucket=True)
    with OIDCIssuer() as issuer:

        def token_endpoint(request: Request) -> Response:
            claims = issuer.github_claims(request.query_params["audience"])
            return JSONResponse({"value": issuer.mint(claims)})

        issuer.routes["/github-token"] = token_endpoint
        config = tmp_path / "broker.yaml"
        config.write_text(broker_yaml(issuer.url, f"sqlite:///{tmp_path / 'broker.db'}"))
        with running_broker(config, tmp_path / "broker-home") as (url, _log):
            yield {
                "BROKER_URL": url,
                "AIRLOCK_S3_ENDPOINT_URL": moto_server.endpoint_url,
                "ACTIONS_ID_TOKEN_REQUEST_URL": f"{issuer.url}/github-token?api-version=2.0",
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "example",
            }


def install_example(repo: Path, name: str) -> None:
    workflow = rewrite(yaml.safe_load((REPO / "examples/github" / name).read_text()))
    target = repo / "tests/actions/workflows" / name
    target.write_text(yaml.safe_dump(workflow, sort_keys=False))
    for extra in ("examples/demo_agent.py", "examples/github/airlock.yaml"):
        (repo / extra).parent.mkdir(parents=True, exist_ok=True)
        (repo / extra).write_bytes((REPO / extra).read_bytes())


def newest_archived(s3: Any, prefix: str) -> dict[str, Any]:
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="acme-audit", Prefix=prefix)["Contents"]]
    manifest_key = sorted(k for k in keys if k.endswith("manifest.json"))[-1]
    manifest = json.loads(s3.get_object(Bucket="acme-audit", Key=manifest_key)["Body"].read())
    events_key = manifest_key.replace("manifest.json", "events.jsonl.gz")
    events = gzip.decompress(s3.get_object(Bucket="acme-audit", Key=events_key)["Body"].read())
    return {
        "manifest": manifest,
        "events": events.decode(),
        "head": s3.head_object(Bucket="acme-audit", Key=events_key),
    }


def test_rewrite_touches_only_what_points_outside() -> None:
    original = yaml.safe_load((REPO / "examples/github/agent.yml").read_text())
    rewritten = rewrite(yaml.safe_load((REPO / "examples/github/agent.yml").read_text()))
    (before,) = [s for s in original["jobs"]["agent"]["steps"] if s.get("id") == "airlock"]
    (after,) = [s for s in rewritten["jobs"]["agent"]["steps"] if s.get("id") == "airlock"]
    assert after["uses"] == "./"
    kept = ("policy", "archive-to", "retention-days")
    assert {k: after["with"][k] for k in kept} == {k: before["with"][k] for k in kept}
    assert after["env"]["TASK"] == before["env"]["TASK"]


def test_agent_example(
    act_repo: Path, local_services: dict[str, str], moto_server: MotoServer
) -> None:
    install_example(act_repo, "agent.yml")
    commit_all(act_repo)
    task = "add input validation; $(touch /tmp/example-injected)"
    done = run_act(
        act_repo, "agent.yml", local_services, event="workflow_dispatch", inputs={"task": task}
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "agent: planning the change" in log and SECRET not in log and STATIC_VALUE not in log
    assert "gateway appdb (postgres) at 127.0.0.1:6432" in log and APPDB_PASSWORD not in log
    assert "revoked 1 lease(s)" in log, log[-6000:]
    assert f"task: {task}" in log  # the task reached the agent as data, not as shell
    archived = newest_archived(moto_server.client("s3"), "airlock/github/")
    assert archived["head"]["ObjectLockMode"] == "COMPLIANCE"
    assert archived["manifest"]["status"] == "complete" and archived["manifest"]["checkpoints"]
    shown = "".join(e["data"]["text"] for e in _events(archived["events"]) if "text" in e["data"])
    assert SECRET not in archived["events"] + shown  # joined: output is cut into events anywhere
    assert '"credential.issued"' in archived["events"]
    # the agent ran sandboxed (the action's default), every probe of its self-check passed
    (status,) = [e["data"] for e in _events(archived["events"]) if e["type"] == "sandbox.status"]
    assert (status["mode"], status["active"]) == ("required", True)
    assert status["probes"] and all(p["ok"] for p in status["probes"]), status["probes"]


def _events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_bracket_example(
    act_repo: Path, local_services: dict[str, str], moto_server: MotoServer
) -> None:
    install_example(act_repo, "agent-bracket.yml")
    commit_all(act_repo)
    done = run_act(act_repo, "agent-bracket.yml", local_services, event="workflow_dispatch")
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "agent working on: fix the failing test" in log
    assert "revoked 1 lease(s)" in log, log[-6000:]
    archived = newest_archived(moto_server.client("s3"), "airlock/github/")
    # the uses: agent's own step, by hash: the example leaves record-scripts off. The recorded
    # output is one stream cut into events wherever the masker released it, so it is joined
    # before searching (a path may end one event and go on in the next).
    shown = "".join(e["data"]["text"] for e in _events(archived["events"]) if e["type"] == "output")
    assert "2-composite-0.sh" in shown and "script sha256=" in shown
    assert "agent working on: $TASK" not in shown + archived["events"]
    assert archived["manifest"]["checkpoints"], "witnessed by the broker while it ran"
