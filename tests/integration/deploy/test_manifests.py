"""``deploy/``: Kubernetes manifests validated offline against the Kubernetes schemas
(``kubernetes-validate``, strict: unknown fields fail), plus the promises between the
pieces — probes on the endpoints the server really has, a grace period above the drain
timeout, the HPA's metric a real ``/metrics`` exposes, the ingress hashing on the query
parameter the client really sends, and the compose file wired like the HAProxy config.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from echopanel.server import ServerConfig, serve_in_background
from echopanel.server.config import ENV_VARS
from echopanel.session.config import ROUTING_KEY_PARAM
from echopanel.testing.asr import FakeAsrBackend

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
#: The oldest Kubernetes minor the manifests promise to work on, and the newest schema known.
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resource(kind: str) -> dict[str, Any]:
    (doc,) = [d for p in MANIFESTS for d in load(p) if d["kind"] == kind]
    return doc


def container() -> dict[str, Any]:
    (c,) = resource("Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def env() -> dict[str, Any]:
    return {e["name"]: e for e in container()["env"]}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_strictly(path, version):
    for doc in load(path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_is_not_vacuous():
    deployment = copy.deepcopy(resource("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)
    hpa = copy.deepcopy(resource("HorizontalPodAutoscaler"))
    del hpa["spec"]["metrics"][0]["pods"]["target"]["type"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]


def test_every_resource_selects_the_deployments_pods():
    labels = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    selectors = [
        resource("Deployment")["spec"]["selector"]["matchLabels"],
        resource("Service")["spec"]["selector"],
        resource("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= labels.items()
    target = resource("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        resource("Deployment")["metadata"]["name"],
    )
    backend = resource("Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == resource("Service")["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in resource("Service")["spec"]["ports"]}


def test_probes_readiness_on_ready_liveness_on_health():
    c = container()
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["readinessProbe"]["failureThreshold"] == 1  # full or draining: out at once
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60  # model load
    port = c["ports"][0]
    assert port["name"] == "http" and str(port["containerPort"]) == env()["ECHOPANEL_PORT"]["value"]


def test_the_token_comes_from_a_secret_and_every_variable_is_real():
    assert env()["ECHOPANEL_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    assert "value" not in env()["ECHOPANEL_TOKEN"]
    known = set(ENV_VARS.values()) | {"ECHOPANEL_DRAIN_TIMEOUT"}  # drain: #10
    assert set(env()) <= known
    assert not any("token" in arg.lower() for arg in container()["args"])


def test_grace_period_exceeds_the_drain_timeout():
    spec = resource("Deployment")["spec"]["template"]["spec"]
    drain = float(env()["ECHOPANEL_DRAIN_TIMEOUT"]["value"])
    assert spec["terminationGracePeriodSeconds"] >= drain + 10


def test_resources_follow_the_benchmarks():
    """docs/benchmarks.md: one 2-core process holds 2 real-time streams at full quality."""
    resources = container()["resources"]
    assert resources["requests"]["cpu"] == "2"
    assert "cpu" not in resources.get("limits", {})  # throttling would break real time
    assert "memory" in resources["limits"]
    assert int(env()["ECHOPANEL_MAX_SESSIONS"]["value"]) == 2


def test_rollouts_and_disruptions_never_drop_below_the_replica_count():
    deployment = resource("Deployment")["spec"]
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert resource("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    hpa = resource("HorizontalPodAutoscaler")["spec"]
    assert hpa["minReplicas"] >= 2 and hpa["minReplicas"] <= deployment["replicas"]


def _millis(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_hpa_targets_a_share_of_the_slots():
    (metric,) = resource("HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["type"] == "Pods"
    target = _millis(metric["pods"]["target"]["averageValue"])
    slots = int(env()["ECHOPANEL_MAX_SESSIONS"]["value"])
    assert 0.5 * slots <= target < slots  # scale up before the last slot is taken


async def test_the_hpa_metric_is_a_gauge_the_server_exposes():
    name = resource("HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    server = serve_in_background(ServerConfig(asr="fake"), asr=FakeAsrBackend())
    async with server as url, httpx.AsyncClient() as client:
        text = (await client.get(f"{url}/metrics")).text
    assert f"# TYPE {name} gauge" in text
    assert re.search(rf"^{name} 0(\.0)?$", text, re.MULTILINE)


def test_ingress_keeps_websockets_open_and_hashes_on_the_session_key():
    annotations = resource("Ingress")["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert annotations[prefix + "upstream-hash-by"] == f"$arg_{ROUTING_KEY_PARAM}"
    assert int(annotations[prefix + "proxy-read-timeout"]) >= 3600
    assert int(annotations[prefix + "proxy-send-timeout"]) >= 3600
    (path,) = resource("Ingress")["spec"]["rules"][0]["http"]["paths"]
    assert path["path"] == "/ws/live-listener"


def test_compose_runs_two_replicas_behind_haproxy_like_the_test():
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"replica1", "replica2", "haproxy"} <= services.keys()
    cfg = (ROOT / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    used = set(re.findall(r"\$\{(ECHOPANEL_[A-Z0-9_]+)", cfg))
    lb_env = services["haproxy"]["environment"]
    assert used == set(lb_env)  # every variable the config reads is set, nothing else
    for index in (1, 2):
        host, _, port = lb_env[f"ECHOPANEL_REPLICA_{index}"].partition(":")
        assert host in services and port == "8765"
        replica = services[host]
        assert replica["environment"]["ECHOPANEL_TOKEN"].startswith("${ECHOPANEL_TOKEN:?")
        assert "/health" in " ".join(replica["healthcheck"]["test"])
        assert services["haproxy"]["depends_on"][host]["condition"] == "service_healthy"
        grace = float(replica["stop_grace_period"].rstrip("s"))
        assert grace > float(replica["environment"]["ECHOPANEL_DRAIN_TIMEOUT"])
    (volume,) = services["haproxy"]["volumes"]
    assert volume.startswith("./haproxy/haproxy.cfg:")
    assert "balance url_param " + ROUTING_KEY_PARAM in cfg
    assert "http-check send meth GET uri /ready" in cfg
