"""examples/kubernetes: every manifest is valid against the Kubernetes OpenAPI schemas shipped by
`kubernetes-validate` (strict: no unknown fields), and the pieces fit together and fit the relay: the
ConfigMap's config loads, the probes and ports name its listeners, the grace period outlasts the
preStop pause plus drain_timeout, the pod runs as the image's non-root user on a read-only root with
a writable /tmp for the pid file, and the Service, PodDisruptionBudget and autoscaler select it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from llmrelay.config import load_config_text

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "examples" / "kubernetes"
SECRET_NAMES = ("TEAM_RELAY_KEY", "LLMRELAY_ADMIN_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")


def documents() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found[document["kind"]] = document
    return found


@pytest.mark.parametrize("path", sorted(MANIFESTS.glob("*.yaml")), ids=lambda path: path.name)
def test_every_manifest_is_valid_kubernetes(path: Path) -> None:
    version = kubernetes_validate.latest_version()
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, version, strict=True)  # raises ValidationError


def test_the_manifests_fit_together_and_fit_the_relay() -> None:
    docs = documents()
    assert set(docs) == {"ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    text = docs["ConfigMap"]["data"]["llmrelay.toml"]
    assert set(re.findall(r"\$\{(\w+)\}", text)) == set(SECRET_NAMES) == set(docs["Secret"]["stringData"])
    config = load_config_text(text, "configmap", environ={name: f"value-of-{name}" for name in SECRET_NAMES})
    raw = tomllib.loads(text)

    pod = docs["Deployment"]["spec"]["template"]
    labels = pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": config.server.port, "admin": raw["server"]["admin"]["port"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    liveness = container["livenessProbe"]["exec"]["command"]
    assert liveness[:2] == ["llmrelay", "status"] and f"http://127.0.0.1:{ports['admin']}" in liveness
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["spec"]["terminationGracePeriodSeconds"] > pause + config.server.drain_timeout

    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    config_path = next(env["value"] for env in container["env"] if env["name"] == "CONFIG_PATH")
    assert Path(config_path).parent.as_posix() in mounts and Path(config_path).name in docs["ConfigMap"]["data"]
    assert "/tmp" in mounts  # the image's pid file (LLMRELAY_PID_FILE=/tmp/llmrelay.pid) on a read-only root
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "LLMRELAY_PID_FILE=/tmp/llmrelay.pid" in dockerfile
    user = int(re.search(r"--uid (\d+)", dockerfile).group(1))  # type: ignore[union-attr]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True and pod["spec"]["securityContext"]["runAsUser"] == user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["envFrom"] == [{"secretRef": {"name": docs["Secret"]["metadata"]["name"]}}]

    name = docs["Deployment"]["metadata"]["name"]
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    assert {port["targetPort"] for port in docs["Service"]["spec"]["ports"]} == set(ports)
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
