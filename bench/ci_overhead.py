"""Wall time Airlock adds to a small agent job under a real runner (act on the host), same run:

    baseline   the agent command as a plain `run:` step
    warm       the root action (install from cache, OIDC exchange at a local broker, run, seal,
               archive to a directory, summary, revoke), Airlock's venv cache warm
    cold       the same with an empty venv cache and pip's own cache off (a fresh hosted runner)

    .venv/bin/python bench/ci_overhead.py [--quick]

Targets: overhead under 10 s cold and under 3 s warm. Cold downloads the pinned wheels from the
package index, so it depends on the network.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _util import env_without_ci, tool  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402
from tests.broker.conftest import AUDIENCE, broker_yaml  # noqa: E402
from tests.support.moto_server import free_port  # noqa: E402
from tests.support.oidc_issuer import OIDCIssuer  # noqa: E402

AGENT = 'echo "agent: reading the code"; for i in 1 2 3; do echo "agent: step $i"; done'
WORKFLOWS = {
    "baseline.yml": f"""
on: push
jobs:
  agent:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: {AGENT!r}
""",
    "airlock.yml": f"""
on: push
jobs:
  agent:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: ./
        with:
          command: {AGENT!r}
          broker-url: ${{{{ env.BROKER_URL }}}}
          audience: ${{{{ env.BROKER_AUDIENCE }}}}
          grants: deploy
          archive-to: ${{{{ env.ARCHIVE }}}}
""",
}


def make_repo(root: Path) -> Path:
    repo = root / "repo"
    for name in ("action.yml", "actions", "core", "pyproject.toml"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            repo.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    (repo / "wf").mkdir()
    for name, text in WORKFLOWS.items():
        (repo / "wf" / name).write_text(text)
    git = ["git", "-C", str(repo), "-c", "user.email=b@example.invalid", "-c", "user.name=b"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "bench"], check=True)
    return repo


@contextmanager
def broker(root: Path) -> Iterator[tuple[str, str]]:
    with OIDCIssuer() as issuer:

        def token(request: Request) -> Response:
            claims = issuer.github_claims(request.query_params["audience"])
            return JSONResponse({"value": issuer.mint(claims)})

        issuer.routes["/github-token"] = token
        config = root / "broker.yaml"
        config.write_text(broker_yaml(issuer.url, f"sqlite:///{root / 'broker.db'}"))
        port = free_port()
        proc = subprocess.Popen(
            [tool("airlock"), "broker", "serve", "--config", str(config), "--port", str(port)],
            env={**os.environ, "XDG_CONFIG_HOME": str(root / "broker-config")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url)
        try:
            yield url, f"{issuer.url}/github-token?api-version=2.0"
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)


def wait_healthy(url: str) -> None:
    import httpx

    for _ in range(300):
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("bench: the broker did not start")


def act_seconds(repo: Path, workflow: str, env: dict[str, str], extra: dict[str, str]) -> float:
    argv = [tool("act"), "push", "-P", "ubuntu-latest=-self-hosted", "-W", f"wf/{workflow}"]
    for name, value in extra.items():
        argv += ["--env", f"{name}={value}"]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bench: {workflow} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return seconds


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one warm run instead of three")
    args = parser.parse_args()
    repeat = 1 if args.quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = make_repo(root)
        base_env = {**env_without_ci(), "ACT_DISABLE_VERSION_CHECK": "1"}
        base_env["XDG_CONFIG_HOME"] = str(root / "config")
        with broker(root) as (broker_url, token_url):
            extra = {
                "BROKER_URL": broker_url,
                "BROKER_AUDIENCE": AUDIENCE,
                "ARCHIVE": str(root / "archive"),
                "ACTIONS_ID_TOKEN_REQUEST_URL": token_url,
                "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "bench",
            }
            baseline = median(
                [act_seconds(repo, "baseline.yml", base_env, extra) for _ in range(repeat)]
            )
            cold_env = {
                **base_env,
                "AIRLOCK_CACHE_DIR": str(root / "cold-cache"),
                "PIP_NO_CACHE_DIR": "1",
            }
            cold = act_seconds(repo, "airlock.yml", cold_env, extra)
            warm_env = {**base_env, "AIRLOCK_CACHE_DIR": str(root / "cold-cache")}
            warm = median(
                [act_seconds(repo, "airlock.yml", warm_env, extra) for _ in range(repeat)]
            )
    print(f"small agent job under act (host runner), median of {repeat}\n")
    print(f"{'baseline: plain run: step':<44} {baseline:8.2f} s")
    print(f"{'airlock, warm venv cache':<44} {warm:8.2f} s")
    print(f"{'airlock, cold (empty cache, no pip cache)':<44} {cold:8.2f} s")
    print(f"\nwarm overhead = {warm - baseline:.2f} s (target < 3 s); ratio {warm / baseline:.2f}x")
    print(f"cold overhead = {cold - baseline:.2f} s (target < 10 s); ratio {cold / baseline:.2f}x")


if __name__ == "__main__":
    main()
