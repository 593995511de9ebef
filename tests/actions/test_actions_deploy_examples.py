"""examples/deploy, validated as far as this machine allows (no container runtime, no cluster):
Kubernetes manifests against the bundled API schemas (strict), the compose file against the
compose spec, the systemd unit with systemd-analyze, and the broker config they carry."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from tests.actions.helpers import REPO

DEPLOY = REPO / "examples" / "deploy"
BIN = Path(sys.executable).parent


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_kubernetes_manifests_validate_strictly() -> None:
    manifest = DEPLOY / "kubernetes" / "broker.yaml"
    done = run(str(BIN / "kubernetes-validate"), "--strict", str(manifest))
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(manifest.read_text())}
    assert {"Deployment", "Service", "ConfigMap", "NetworkPolicy", "PodDisruptionBudget"} <= kinds


def test_kubernetes_pods_are_locked_down() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "broker.yaml").read_text()))
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert deployment["spec"]["replicas"] >= 2  # the broker is stateless: replicas share state


def test_kubernetes_broker_config_passes_broker_check(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "broker.yaml").read_text()))
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    config = tmp_path / "broker.yaml"
    config.write_text(config_map["data"]["broker.yaml"])
    done = run(sys.executable, "-m", "airlock._cli", "broker", "check", "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_file_validates_against_the_compose_spec() -> None:
    done = run(
        str(BIN / "check-jsonschema"),
        "--builtin-schema",
        "vendor.compose-spec",
        str(DEPLOY / "compose.yaml"),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    broker = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["broker"]
    assert broker["read_only"] is True and broker["cap_drop"] == ["ALL"]
    assert broker["ports"] == ["127.0.0.1:8080:8080"]


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze is needed (apt-get install systemd)"
    unit = (DEPLOY / "airlock-broker.service").read_text()
    # The unit names /opt/airlock; systemd-analyze checks that the binary exists, so point it
    # at this checkout's airlock for the check.
    local = tmp_path / "airlock-broker.service"
    local.write_text(unit.replace("/opt/airlock/bin/airlock", str(BIN / "airlock")))
    done = run("systemd-analyze", "verify", str(local))
    assert done.returncode == 0, done.stdout + done.stderr
    for hardening in ("NoNewPrivileges=yes", "ProtectSystem=strict", "DynamicUser=yes"):
        assert hardening in unit


def test_dockerfile_runs_the_broker_unprivileged() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "USER 10001" in text
    assert 'ENTRYPOINT ["airlock", "broker", "serve"]' in text
