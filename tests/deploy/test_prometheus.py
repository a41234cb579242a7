"""The Prometheus configuration and alert rules, checked by Prometheus's own promtool:
the config loads, every alert has unit tests (firing and not firing), and an alert sees the
very first error the service answers (its series exist at 0 before it).

promtool comes from Debian's `prometheus` package, which `.ci/run` installs. Without it these
tests skip (and say so) on a developer's machine, and fail under CI=true.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.settings import Settings
from tests.api.conftest import fake_factory
from tests.fakes import FakeEncoder
from tests.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
HINT = "needs promtool: apt-get install prometheus (Debian), as .ci/run does"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"promtool missing: {HINT}")
        pytest.skip(f"promtool missing: {HINT}")
    return path


def run(promtool: str, *args: str, cwd: Path = PROMETHEUS) -> str:
    done = subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_the_prometheus_config_and_its_rules_load(promtool: str) -> None:
    # From the repository root, as a developer runs it: the rules path is relative.
    out = run(promtool, "check", "config", "deploy/prometheus/prometheus.yml", cwd=ROOT)
    assert "SUCCESS" in out and "alerts.yml" in out


def test_every_alert_has_unit_tests_that_pass(promtool: str) -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yml").read_text())
    firing: dict[str, bool] = {a: False for a in alerts}
    quiet: dict[str, bool] = {a: False for a in alerts}
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            if check["exp_alerts"]:
                firing[check["alertname"]] = True
            else:
                quiet[check["alertname"]] = True
    assert all(firing.values()), f"alerts never shown firing: {firing}"
    assert all(quiet.values()), f"alerts never shown quiet: {quiet}"
    assert "SUCCESS" in run(promtool, "test", "rules", "alerts.test.yml")


def _samples(text: str) -> dict[str, float]:
    """Series (as PromQL selectors) and their values in a scrape."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def test_the_first_queue_full_answers_fire_the_alert(
    promtool: str, make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    """Scrape a fresh service, make it answer 429s, scrape again: fed to Prometheus as one
    minute apart, the two scrapes must make `increase()` see the 429s and the alert fire."""
    import threading

    slow = FakeEncoder(dims=16, delay=0.3)
    tight = Settings(max_queue_texts=8, threads=1, data_dir=tmp_path / "data")
    client = make_client(tight, engine_factory=fake_factory(slow))
    before = _samples(client.get("/metrics").text)
    seen = len(slow.batches)  # the warm-up's
    first = threading.Thread(target=lambda: client.post("/embed", json={"inputs": ["a b"] * 8}))
    first.start()
    wait_until(lambda: len(slow.batches) > seen, 10, "the first request's batch started")
    refused = [client.post("/embed", json={"inputs": ["c d"] * 2}).status_code for _ in range(3)]
    first.join()
    assert refused == [429, 429, 429]
    after = _samples(client.get("/metrics").text)
    series = 'simsvc_errors_total{error_type="queue_full"}'
    assert after[series] == 3
    # Absent from the first scrape, a series is written as missing ("_") there.
    values = " ".join(
        ["_" if series not in before else str(before[series])] + [str(after[series])] * 6
    )
    test = {
        "rule_files": [str(PROMETHEUS / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": series, "values": values}],
                "promql_expr_test": [
                    {
                        "expr": 'sum(increase(simsvc_errors_total{error_type="queue_full"}[5m]))'
                        " > bool 0",
                        "eval_time": "2m",
                        "exp_samples": [{"labels": "{}", "value": 1}],
                    }
                ],
                "alert_rule_test": [
                    {
                        "alertname": "SimsvcQueueFull",
                        "eval_time": "4m",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "page"},
                                "exp_annotations": {
                                    "summary": "The encoder queue is (nearly) full; clients "
                                    "get 429. Scale out."
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "first-error.test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    assert "SUCCESS" in run(promtool, "test", "rules", str(path))
