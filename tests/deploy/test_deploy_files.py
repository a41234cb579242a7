"""The deploy files, checked without a Docker daemon: parsed, cross-checked against the
settings, the routes and the metrics the service really exports."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SETTING_ENV = {f"SIMSVC_{name.upper()}" for name in Settings.model_fields}


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _k8s() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc.get("apiVersion") and doc.get("kind"), path
            docs[doc["kind"]] = doc
    return docs


def test_compose_services_ports_volumes_and_healthchecks() -> None:
    compose = _yaml(ROOT / "docker-compose.yml")
    services = compose["services"]
    assert set(services) >= {"simsvc", "prometheus", "grafana"}
    for name, svc in services.items():
        assert "healthcheck" in svc, name
        assert svc.get("ports"), name
    app = services["simsvc"]
    assert app["build"]["dockerfile"] == "deploy/Dockerfile"
    assert "8000:8000" in app["ports"]
    assert "/ready" in " ".join(app["healthcheck"]["test"])
    mounts = dict(v.split(":")[::-1][:2][::-1] for v in app["volumes"])
    assert mounts["bundles"] == "/bundles" and mounts["index-data"] == "/data"
    assert app["environment"]["SIMSVC_DATA_DIR"] == "/data"
    assert set(app["environment"]) <= SETTING_ENV
    assert app["env_file"][0]["path"] == ".env"
    assert set(compose["volumes"]) >= {"bundles", "index-data"}
    # Prometheus scrapes the metrics port the service is told to use.
    prom = _yaml(DEPLOY / "prometheus" / "prometheus.yml")
    target = prom["scrape_configs"][0]["static_configs"][0]["targets"][0]
    assert target == f"simsvc:{app['environment']['SIMSVC_METRICS_PORT']}"
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert any("provisioning" in v for v in services["grafana"]["volumes"])
    example = (ROOT / ".env.example").read_text()
    keys = [
        line.split("=", 1)[0]
        for line in example.splitlines()
        if "=" in line and not line.startswith("#")
    ]
    assert "SIMSVC_API_KEYS" in keys
    env_keys = json.loads(example.split("SIMSVC_API_KEYS=", 1)[1].splitlines()[0])
    assert all({"name", "key", "scopes"} <= set(k) for k in env_keys)


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert [s.split()[2] for s in stages] == ["build", "runtime"]
    build, runtime = stages
    assert "torch==2.13.0" in build and "'.[build]'" in build and "simsvc build" in build
    assert "torch" not in runtime and "[build]" not in runtime
    assert "COPY --from=build" in runtime
    assert re.search(r"^USER simsvc$", runtime, flags=re.M)
    assert "HEALTHCHECK" in runtime and "/ready" in runtime
    env = dict(re.findall(r"(SIMSVC_[A-Z_]+)=(\S+)", runtime))
    assert set(env) <= SETTING_ENV


def test_k8s_manifests_are_consistent() -> None:
    docs = _k8s()
    assert set(docs) >= {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
        "ConfigMap",
        "Secret",
    }
    dep = docs["Deployment"]
    pod = dep["spec"]["template"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = docs["ConfigMap"]["data"]
    assert set(config) <= SETTING_ENV
    assert set(docs["Secret"]["stringData"]) <= SETTING_ENV
    assert ports["http"] == int(config["SIMSVC_PORT"])
    assert ports["metrics"] == int(config["SIMSVC_METRICS_PORT"])
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == config["SIMSVC_METRICS_PORT"]
    for probe, path in (
        ("startupProbe", "/ready"),
        ("readinessProbe", "/ready"),
        ("livenessProbe", "/live"),
    ):
        assert container[probe]["httpGet"]["path"] == path
        assert container[probe]["httpGet"]["port"] in ports
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]
    refs = {r.get("configMapRef", r.get("secretRef"))["name"] for r in container["envFrom"]}
    assert refs == {docs["ConfigMap"]["metadata"]["name"], docs["Secret"]["metadata"]["name"]}
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {docs["PersistentVolumeClaim"]["metadata"]["name"]}
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mount["data"] == config["SIMSVC_DATA_DIR"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    labels = pod["metadata"]["labels"]
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert {p["targetPort"] for p in docs["Service"]["spec"]["ports"]} <= set(ports)
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert any(
        m.get("pods", {}).get("metric", {}).get("name") == "simsvc_queue_depth"
        for m in hpa["metrics"]
    )
    listed = set(_yaml(DEPLOY / "k8s" / "kustomization.yaml")["resources"])
    assert listed == {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}


def _queries() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "simsvc.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    rules = _yaml(DEPLOY / "prometheus" / "alerts.yml")
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return exprs


def test_dashboard_covers_what_operators_need() -> None:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "simsvc.json").read_text())
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for topic in (
        "request rate",
        "p99",
        "queue depth",
        "batch size",
        "errors by type",
        "probability distribution",
    ):
        assert topic in titles, topic
    assert all(p["datasource"]["uid"] == "prometheus" for p in dash["panels"])
    ds = _yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    assert ds["datasources"][0]["uid"] == "prometheus"
    alerts = {
        r["alert"]
        for g in _yaml(DEPLOY / "prometheus" / "alerts.yml")["groups"]
        for r in g["rules"]
    }
    assert {"SimsvcHighErrorRate", "SimsvcHighP99Latency", "SimsvcQueueFull"} <= alerts


@pytest.fixture
def exported(make_client: Callable[..., TestClient], tiny_bundle: Path, tmp_path: Path) -> set[str]:
    """Sample names on /metrics of a real bundle after some traffic, collections included."""
    from prometheus_client.parser import text_string_to_metric_families

    client = make_client(
        Settings(bundle=tiny_bundle, threads=1, max_texts_per_request=8, data_dir=tmp_path)
    )
    client.post("/v1/similarity", json={"pairs": [{"a": "x", "b": "y"}]})
    client.post("/embed", json={"inputs": ["t"] * 99})
    docs = [{"id": str(i), "text": f"the dog runs {i}"} for i in range(5)]
    assert client.post("/v1/collections/c/documents", json={"documents": docs}).status_code == 200
    assert client.post("/v1/collections/c/search", json={"query": "dog", "k": 2}).status_code == 200
    assert client.put("/v1/collections/c", json={"index": {"kind": "hnsw"}}).status_code == 200
    text = client.get("/metrics").text
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_every_metric_in_dashboard_and_alerts_is_exported(exported: set[str]) -> None:
    named = {m for e in _queries() for m in re.findall(r"\bsimsvc_[a-z0-9_]+", e)}
    assert named, "no queries found"
    missing = named - exported
    assert not missing, f"dashboard/alerts name metrics /metrics lacks: {sorted(missing)}"


def test_logs_are_json_lines_wherever_the_service_is_deployed() -> None:
    """The container, compose and Kubernetes all log JSON lines (control characters escaped
    by construction, one record per line for the log shipper)."""
    runtime = re.split(r"^FROM ", (DEPLOY / "Dockerfile").read_text(), flags=re.M)[-1]
    assert re.search(r"SIMSVC_LOG_JSON=true\b", runtime)
    compose = _yaml(ROOT / "docker-compose.yml")
    assert compose["services"]["simsvc"]["environment"]["SIMSVC_LOG_JSON"] == "true"
    assert _k8s()["ConfigMap"]["data"]["SIMSVC_LOG_JSON"] == "true"
