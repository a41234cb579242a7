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


def _k8s(overlay: str) -> dict[str, dict[str, Any]]:
    """The objects a kustomization applies, by kind (its bases' too), checking that each
    lists exactly the files beside it."""
    folder = DEPLOY / "k8s" / overlay
    listed = _yaml(folder / "kustomization.yaml")["resources"]
    files = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
    assert {r for r in listed if not r.startswith("..")} == files, overlay
    docs: dict[str, dict[str, Any]] = {}
    for resource in listed:
        if resource.startswith(".."):
            docs.update(_k8s(str((folder / resource).resolve().relative_to(DEPLOY / "k8s"))))
            continue
        for doc in yaml.safe_load_all((folder / resource).read_text()):
            assert doc.get("apiVersion") and doc.get("kind"), resource
            docs[
                doc["kind"] if doc["kind"] != "Secret" else f"Secret/{doc['metadata']['name']}"
            ] = doc
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


def test_compose_postgres_profile_runs_replicas_on_one_database() -> None:
    compose = _yaml(ROOT / "docker-compose.yml")
    services = compose["services"]
    db, replica = services["postgres"], services["simsvc-pg"]
    assert db["profiles"] == ["postgres"] and replica["profiles"] == ["postgres"]
    assert "pgvector" in db["image"] and "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert replica["depends_on"]["postgres"]["condition"] == "service_healthy"
    env = replica["environment"]
    assert set(env) <= SETTING_ENV
    url = env["SIMSVC_STORE"]
    assert url.startswith("postgresql://") and "@postgres:5432/" in url
    assert db["environment"]["POSTGRES_DB"] == url.rsplit("/", 1)[1]
    assert "SIMSVC_DATA_DIR" not in env and "volumes" not in replica  # stateless
    # A port range, so `--scale simsvc-pg=N` does not collide.
    assert all("-" in p.split(":")[0] for p in replica["ports"])
    assert "postgres" not in services["simsvc"].get("profiles", [])
    prom = _yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    sd = jobs["simsvc-pg"]["dns_sd_configs"][0]
    assert sd["names"] == ["simsvc-pg"] and sd["port"] == int(env["SIMSVC_METRICS_PORT"])


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


def _check_workload(docs: dict[str, dict[str, Any]], workload: dict[str, Any]) -> None:
    """Probes, ports, settings, security and labels of a Deployment or StatefulSet."""
    pod = workload["spec"]["template"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = docs["ConfigMap"]["data"]
    assert set(config) <= SETTING_ENV
    secrets = {k: v for k, v in docs.items() if k.startswith("Secret/")}
    for secret in secrets.values():
        assert set(secret["stringData"]) <= SETTING_ENV
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
    assert refs == {docs["ConfigMap"]["metadata"]["name"]} | {
        s["metadata"]["name"] for s in secrets.values()
    }
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    labels = pod["metadata"]["labels"]
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert {p["targetPort"] for p in docs["Service"]["spec"]["ports"]} <= set(ports)


def test_k8s_local_store_is_one_replica_that_cannot_be_scaled_apart() -> None:
    docs = _k8s("local")
    assert "Deployment" not in docs and "HorizontalPodAutoscaler" not in docs
    sts = docs["StatefulSet"]
    _check_workload(docs, sts)
    assert sts["spec"]["replicas"] == 1
    claims = sts["spec"]["volumeClaimTemplates"]
    assert [c["spec"]["accessModes"] for c in claims] == [["ReadWriteOnce"]]
    container = sts["spec"]["template"]["spec"]["containers"][0]
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mount[claims[0]["metadata"]["name"]] == docs["ConfigMap"]["data"]["SIMSVC_DATA_DIR"]
    assert "SIMSVC_STORE" not in docs["ConfigMap"]["data"]


def test_k8s_postgres_store_is_stateless_and_scaled_by_the_hpa() -> None:
    docs = _k8s("postgres")
    dep = docs["Deployment"]
    _check_workload(docs, dep)
    pod = dep["spec"]["template"]["spec"]
    # Nothing a replica writes outlives it: no persistent volume at all.
    assert all("persistentVolumeClaim" not in v for v in pod["volumes"])
    assert "PersistentVolumeClaim" not in docs and "StatefulSet" not in docs
    assert docs["Secret/simsvc-store"]["stringData"]["SIMSVC_STORE"].startswith("postgresql://")
    hpa = docs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "simsvc",
    }
    assert hpa["minReplicas"] >= 2 and dep["spec"]["replicas"] >= 2
    assert any(
        m.get("pods", {}).get("metric", {}).get("name") == "simsvc_queue_depth"
        for m in hpa["metrics"]
    )
    assert docs["PodDisruptionBudget"]["spec"]["selector"] == dep["spec"]["selector"]


def test_no_autoscaler_targets_a_workload_with_a_read_write_once_volume() -> None:
    for overlay in ("local", "postgres"):
        docs = _k8s(overlay)
        hpa = docs.get("HorizontalPodAutoscaler")
        if hpa is None:
            continue
        target = docs[hpa["spec"]["scaleTargetRef"]["kind"]]
        assert "volumeClaimTemplates" not in target["spec"], overlay
        volumes = target["spec"]["template"]["spec"].get("volumes", [])
        assert all("persistentVolumeClaim" not in v for v in volumes), overlay


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
    for overlay in ("local", "postgres"):
        assert _k8s(overlay)["ConfigMap"]["data"]["SIMSVC_LOG_JSON"] == "true"
