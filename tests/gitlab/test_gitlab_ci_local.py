"""The GitLab template under a real runner: gitlab-ci-local (Node 22) with the shell executor.

One pipeline (tests/gitlab/pipelines/agent.yml) runs once per module: a passing agent, a failing
agent whose after_script seals and archives, a separate archive job fed by artifacts, and the
manual protected-environment gate with a job that reads its dotenv report. Tools are installed
by tests/gitlab/setup_tools.sh into .cache/ of the checkout (outside git).
"""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from tests.actions.helpers import commit_all, running_broker
from tests.support.moto_server import MotoServer, moto_env, moto_server
from tests.support.oidc_issuer import OIDCIssuer

pytestmark = pytest.mark.service
__all__ = ["moto_server"]  # re-exported fixture

REPO = Path(__file__).resolve().parents[2]
SECRET = "gl-s3cr3t-9d7c1b"
JOB_TOKEN = "glcbt-job-token-value-1234"
COPIED = ("gitlab-templates", "tests/gitlab/pipelines")


@dataclass
class Pipeline:
    project: Path
    log: str
    returncode: int
    archive: Path
    archive2: Path
    sessions: Path

    def job_log(self, job: str) -> str:
        return (self.project / ".gitlab-ci-local" / "output" / f"{job}.log").read_text()

    def artifacts(self, job: str) -> Path:
        return self.project / ".gitlab-ci-local" / "artifacts" / job

    def dotenv(self, job: str, name: str = "airlock/airlock.env") -> dict[str, str]:
        text = (self.artifacts(job) / name).read_text()
        return dict(line.split("=", 1) for line in text.splitlines())


def gitlab_ci_local() -> str:
    done = subprocess.run(
        ["bash", str(REPO / "tests/gitlab/setup_tools.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"cannot install gitlab-ci-local: {done.stderr[-2000:]}"
    return done.stdout.strip().splitlines()[-1]


def airlock_wrapper(path: Path) -> Path:
    """`airlock` for the jobs: this checkout's package, run by the test's interpreter."""
    path.write_text(
        "#!/bin/sh\n"
        f"export PYTHONPATH='{REPO / 'core'}'\n"
        'if [ "$1" = ci ]; then shift; '
        f"exec '{sys.executable}' -m airlock._commands.ci \"$@\"; fi\n"
        f"exec '{sys.executable}' -m airlock._cli \"$@\"\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def make_project(root: Path) -> Path:
    project = root / "project"
    for name in COPIED:
        shutil.copytree(REPO / name, project / name)
    shutil.copy2(project / "tests/gitlab/pipelines/agent.yml", project / ".gitlab-ci.yml")
    git = ["git", "-C", str(project), "-c", "user.email=t@example.invalid", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "test"], check=True)
    return project


def run_gcl(
    project: Path, *args: str, variables: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    tool = gitlab_ci_local()
    argv = [tool, "--shell-executor-no-image", "--shell-isolation", "--no-color", *args]
    for name, value in variables.items():
        argv += ["--variable", f"{name}={value}"]
    env = {
        **os.environ,
        "PATH": f"{Path(tool).parent}:{os.environ['PATH']}",
        "GCL_IGNORE_PREDEFINED_VARS": "GITLAB_CI,CI_JOB_TOKEN",
    }
    return subprocess.run(
        argv, cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    root = tmp_path_factory.mktemp("gitlab")
    project = make_project(root)
    archive, archive2, sessions = root / "archive", root / "archive2", root / "sessions"
    config = root / "xdg"
    done = run_gcl(
        project,
        "--manual",
        "gate",
        variables={
            "GITLAB_CI": "true",
            "CI_JOB_TOKEN": JOB_TOKEN,
            "DEMO_SECRET": SECRET,
            "XDG_CONFIG_HOME": str(config),
            "TEST_AIRLOCK": str(airlock_wrapper(root / "airlock")),
            "TEST_ARCHIVE": str(archive),
            "TEST_ARCHIVE2": str(archive2),
            "TEST_SESSIONS": str(sessions),
        },
    )
    return Pipeline(
        project, done.stdout + done.stderr, done.returncode, archive, archive2, sessions
    )


def manifests(root: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in root.rglob("manifest.json")]


def test_pipeline_result(pipeline: Pipeline) -> None:
    assert pipeline.returncode == 1, pipeline.log[-4000:]  # agent-fails fails, as it should
    assert "PASS" in pipeline.log, pipeline.log[-4000:]
    summary = pipeline.log[pipeline.log.rindex("PASS") - 200 :]
    for job in ("agent-ok", "archive-session", "gate", "after-gate"):
        assert f"PASS  {job}" in summary, pipeline.log[-4000:]
    assert "FAIL  agent-fails" in summary


def test_passing_agent_is_masked_scrubbed_finalized_in_script(pipeline: Pipeline) -> None:
    log = pipeline.job_log("agent-ok")
    assert "agent ok, secret=" in log, log[-4000:]  # the whole tail when the job failed
    assert SECRET not in log
    assert "job token=withheld" in log and JOB_TOKEN not in log
    assert "the script did not finish" not in log  # finalized in the script, fail closed
    dotenv = pipeline.dotenv("agent-ok")
    assert dotenv["AIRLOCK_VERIFIED"] == "ok" and dotenv["AIRLOCK_EXIT_CODE"] == "0"
    assert dotenv["AIRLOCK_ARCHIVE_URL"].startswith(str(pipeline.archive) + "/gitlab/")
    artifacts = pipeline.artifacts("agent-ok") / "airlock"
    assert (artifacts / "sessions" / dotenv["AIRLOCK_SESSION_ID"] / "manifest.json").exists()
    assert (artifacts / "report.html").exists() and (artifacts / "summary.md").exists()


def test_failing_agent_is_sealed_and_archived_by_after_script(pipeline: Pipeline) -> None:
    log = pipeline.job_log("agent-fails")
    assert "agent breaks" in log
    assert "the script did not finish: sealing, revoking and archiving now" in log
    dotenv = pipeline.dotenv("agent-fails")
    assert dotenv["AIRLOCK_EXIT_CODE"] == "3" and dotenv["AIRLOCK_VERIFIED"] == "ok"
    archived = {m["session_id"]: m for m in manifests(pipeline.archive)}
    assert archived[dotenv["AIRLOCK_SESSION_ID"]]["exit_code"] == 3


def test_identity_and_layout_are_gitlab(pipeline: Pipeline) -> None:
    (events,) = [
        gzip.decompress(p.read_bytes()).decode()
        for p in pipeline.archive.rglob("events.jsonl.gz")
        if pipeline.dotenv("agent-ok")["AIRLOCK_SESSION_ID"] in str(p)
    ]
    start = json.loads(events.splitlines()[0])
    assert start["data"]["identity"]["platform"] == "gitlab"
    # the template's default: the agent ran sandboxed and every self-check probe passed
    (status,) = [
        e["data"] for e in map(json.loads, events.splitlines()) if e["type"] == "sandbox.status"
    ]
    assert (status["mode"], status["active"]) == ("required", True)
    assert status["probes"] and all(p["ok"] for p in status["probes"]), status["probes"]
    assert SECRET not in events and JOB_TOKEN not in events
    assert (
        "/gitlab/fallback.group/fallback.project/"
        in pipeline.dotenv("agent-ok")["AIRLOCK_ARCHIVE_URL"]
    )


def test_archive_job_uploads_the_artifacts_of_the_agent_job(pipeline: Pipeline) -> None:
    agent_session = pipeline.dotenv("agent-ok")["AIRLOCK_SESSION_ID"]
    assert [m["session_id"] for m in manifests(pipeline.archive2)] == [agent_session]
    assert pipeline.dotenv("archive-session")["AIRLOCK_ARCHIVE_URL"].startswith(
        str(pipeline.archive2)
    )


def test_gate_records_the_approval_and_passes_it_on(pipeline: Pipeline) -> None:
    log = pipeline.job_log("gate")
    assert "approved by" in log and "in environment production" in log
    gate = pipeline.dotenv("gate", "airlock/gate/airlock.env")
    assert gate["AIRLOCK_VERIFIED"] == "ok"
    after = pipeline.job_log("after-gate")
    assert f"gate passed session={gate['AIRLOCK_SESSION_ID']} verified=ok status=complete" in after


def test_inputs_are_checked_when_the_pipeline_is_created(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    shutil.copy2(project / "tests/gitlab/pipelines/bad-input.yml", project / ".gitlab-ci.yml")
    done = run_gcl(project, "--preview", variables={})
    assert done.returncode != 0
    assert "fail-mode" in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("retention-days", "ten", "`retention-days` input: provided value is not a number"),
        ("broker-url", "ftp://x", "`broker-url` input: `ftp://x` does not match required regex"),
        ("sandbox", "maybe", "`sandbox` input: `maybe` cannot be used because it is not in the"),
    ],
)
def test_each_typed_input_is_refused_by_name(
    tmp_path: Path, name: str, value: str, said: str
) -> None:
    """The template's spec types, options and regexes: the pipeline is not created, and the
    error names the input. (An input the spec does not declare is refused by GitLab itself;
    gitlab-ci-local does not check that, so it is not tested here.)"""
    project = make_project(tmp_path)
    bad = yaml.safe_load((project / "tests/gitlab/pipelines/bad-input.yml").read_text())
    bad["include"][0]["inputs"] = {name: value}
    (project / ".gitlab-ci.yml").write_text(yaml.safe_dump(bad))
    done = run_gcl(project, "--preview", variables={})
    assert done.returncode != 0
    assert said in done.stdout + done.stderr


GITLAB_BROKER = """
version: 1
issuers: [{{name: gitlab, url: "{issuer}", audience: "{audience}", platform: gitlab}}]
providers:
  static:
    secrets:
      DEPLOY_KEY: "{value}"
grants:
  deploy: {{provider: static, secrets: [DEPLOY_KEY], ttl: 15m}}
rules:
  - id: gitlab-api
    issuer: gitlab
    claims: {{project_id: "20", namespace_id: "72", ref_protected: "true"}}
    grants: [deploy]
state: "sqlite:///{state}"
"""
BROKER_AUDIENCE = "https://airlock.gitlab.test"
BROKER_VALUE = "gitlab-static-deploy-value-31c7"


def test_credentials_exchanged_masked_and_revoked(tmp_path: Path) -> None:
    with OIDCIssuer() as issuer:
        config = tmp_path / "broker.yaml"
        config.write_text(
            GITLAB_BROKER.format(
                issuer=issuer.url,
                audience=BROKER_AUDIENCE,
                value=BROKER_VALUE,
                state=tmp_path / "broker.db",
            )
        )
        token = issuer.mint(issuer.gitlab_claims(BROKER_AUDIENCE))
        with running_broker(config, tmp_path / "broker-home") as (url, broker_log):
            project = make_project(tmp_path)
            pipeline = (project / "tests/gitlab/pipelines/broker.yml").read_text()
            pipeline = pipeline.replace("@BROKER_URL@", url).replace("@AUDIENCE@", BROKER_AUDIENCE)
            (project / ".gitlab-ci.yml").write_text(pipeline)
            done = run_gcl(
                project,
                variables={
                    "GITLAB_CI": "true",
                    "AIRLOCK_ID_TOKEN": token,  # gitlab-ci-local leaves id_tokens empty
                    "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
                    "TEST_AIRLOCK": str(airlock_wrapper(tmp_path / "airlock")),
                    "TEST_ARCHIVE": str(tmp_path / "archive"),
                    "TEST_SESSIONS": str(tmp_path / "sessions"),
                },
            )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    job = (project / ".gitlab-ci-local/output/agent.log").read_text()
    assert "issued deploy under rule gitlab-api" in job
    assert "deploying with [MASKED:credential:deploy]" in job and BROKER_VALUE not in job
    assert "id token visible? no" in job and token not in job
    assert "revoked 1 lease(s)" in job
    assert BROKER_VALUE.encode() not in broker_log
    state = tmp_path / "sessions" / "state-agent"
    assert not (state / "job.json").exists()  # forgotten after the revoke
    artifacts = project / ".gitlab-ci-local/artifacts/agent/airlock"
    assert BROKER_VALUE not in "".join(
        p.read_text(errors="replace") for p in artifacts.rglob("*") if p.is_file()
    )


def test_include_remote_with_inputs(tmp_path: Path) -> None:
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(REPO / "gitlab-templates")
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        project = make_project(tmp_path)
        url = f"http://127.0.0.1:{server.server_address[1]}/airlock.yml"
        text = (project / "tests/gitlab/pipelines/remote.yml").read_text()
        (project / ".gitlab-ci.yml").write_text(
            text.replace("http://template.invalid/airlock.yml", url)
        )
        done = run_gcl(
            project,
            variables={
                "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
                "TEST_AIRLOCK": str(airlock_wrapper(tmp_path / "airlock")),
                "TEST_SESSIONS": str(tmp_path / "sessions"),
            },
        )
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    job = (project / ".gitlab-ci-local/output/agent.log").read_text()
    assert "included remotely" in job
    dotenv = (project / ".gitlab-ci-local/artifacts/agent/airlock/airlock.env").read_text()
    assert "AIRLOCK_VERIFIED=ok" in dotenv


def rewrite_example(text: str, broker_url: str) -> str:
    """examples/gitlab/.gitlab-ci.yml with only what points outside this machine replaced."""
    pipeline = yaml.safe_load(text)
    (include,) = pipeline["include"]
    inputs = {
        **include["inputs"],
        "broker-url": broker_url,
        "audience": BROKER_AUDIENCE,
        "grants": ["deploy"],
        "airlock": "$TEST_AIRLOCK",
        "sessions-dir": "$TEST_SESSIONS/$CI_JOB_NAME",
        "state-dir": "$TEST_SESSIONS/state-$CI_JOB_NAME",
    }
    pipeline["include"] = [{"local": include["file"], "inputs": inputs}]
    agent = pipeline["agent"]
    agent.pop("image")
    agent.pop("before_script")
    command = agent["variables"]["AIRLOCK_COMMAND"]
    command["value"] = (
        'DEMO_API_KEY="$ANTHROPIC_API_KEY" python3 examples/demo_agent.py; echo "task: $AGENT_TASK"'
    )
    pipeline["apply-migration"]["script"] = [
        line for line in pipeline["apply-migration"]["script"] if "migrate.sh" not in line
    ]
    return yaml.safe_dump(pipeline, sort_keys=False)


@pytest.mark.usefixtures("moto_server")
def test_example_pipeline(tmp_path: Path, moto_server: MotoServer) -> None:
    s3 = moto_server.client("s3")
    if "acme-audit" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket="acme-audit", ObjectLockEnabledForBucket=True)
    task = "add input validation; $(touch /tmp/gitlab-example-injected)"
    with OIDCIssuer() as issuer:
        config = tmp_path / "broker.yaml"
        config.write_text(
            GITLAB_BROKER.format(
                issuer=issuer.url,
                audience=BROKER_AUDIENCE,
                value=BROKER_VALUE,
                state=tmp_path / "broker.db",
            )
        )
        token = issuer.mint(issuer.gitlab_claims(BROKER_AUDIENCE))
        with running_broker(config, tmp_path / "broker-home") as (url, _log):
            project = make_project(tmp_path)
            for extra in ("examples/demo_agent.py", "examples/github/airlock.yaml"):
                (project / extra).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / extra, project / extra)
            example = (REPO / "examples/gitlab/.gitlab-ci.yml").read_text()
            (project / ".gitlab-ci.yml").write_text(rewrite_example(example, url))
            commit_all(project)  # the shell executor copies tracked files only
            done = run_gcl(
                project,
                "--manual",
                "approve-migration",
                variables={
                    **moto_env(),
                    "GITLAB_CI": "true",
                    "AIRLOCK_ID_TOKEN": token,
                    "ANTHROPIC_API_KEY": SECRET,
                    "PGUSER_UPSTREAM": "app_agent",
                    "PGPASSWORD_UPSTREAM": "appdb-password-for-tests-77",
                    "AGENT_TASK": task,
                    "AIRLOCK_S3_ENDPOINT_URL": moto_server.endpoint_url,
                    "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
                    "TEST_AIRLOCK": str(airlock_wrapper(tmp_path / "airlock")),
                    "TEST_SESSIONS": str(tmp_path / "sessions"),
                },
            )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    agent = (project / ".gitlab-ci-local/output/agent.log").read_text()
    assert "agent: planning the change" in agent and f"task: {task}" in agent
    assert SECRET not in agent and BROKER_VALUE not in agent
    assert "gateway appdb (postgres)" in agent and "appdb-password-for-tests-77" not in agent
    assert "revoked 1 lease(s)" in agent
    keys = [
        o["Key"]
        for o in s3.list_objects_v2(Bucket="acme-audit", Prefix="airlock/gitlab/")["Contents"]
    ]
    events_key = next(k for k in keys if k.endswith("events.jsonl.gz"))
    assert s3.head_object(Bucket="acme-audit", Key=events_key)["ObjectLockMode"] == "COMPLIANCE"
    apply = (project / ".gitlab-ci-local/output/apply-migration.log").read_text()
    assert "approved in session " in apply and "(ok)" in apply
