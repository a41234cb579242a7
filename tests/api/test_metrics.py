"""Traffic in, /metrics out: every metric is present and moved by what the requests did."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.settings import Settings
from tests.api.conftest import DIMS, fake_factory
from tests.fakes import FakeEncoder

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient) -> Samples:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def test_metrics_count_what_the_traffic_did(client: TestClient) -> None:
    before = scrape(client)
    pairs = {"pairs": [{"a": "a man plays", "b": "a man plays"}, {"a": "x y", "b": "cats"}]}
    for _ in range(5):
        assert client.post("/v1/similarity", json=pairs).status_code == 200
    tokens = 0
    for _ in range(3):
        body = client.post("/v1/embeddings", json={"input": ["hello world", "hi"]}).json()
        tokens += body["usage"]["total_tokens"]
    assert client.post("/embed", json={"inputs": ["t"] * 9}).status_code == 413
    long = " ".join(["w"] * 50)  # the fake encoder keeps 32 tokens
    assert client.post("/embed", json={"inputs": [long]}).status_code == 200
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("simsvc_requests_total", route="/v1/similarity", method="POST", status="200") == 5
    assert moved("simsvc_requests_total", route="/v1/embeddings", method="POST", status="200") == 3
    assert moved("simsvc_requests_total", route="/embed", method="POST", status="413") == 1
    assert (
        moved(
            "simsvc_request_duration_seconds_count",
            route="/v1/similarity",
            method="POST",
            status="200",
        )
        == 5
    )
    assert moved("simsvc_errors_total", error_type="too_many_texts") == 1
    # Tokenized requests: 5 similarity + 3 embeddings + 1 embed (the 413 never tokenized).
    assert moved("simsvc_tokenize_seconds_count") == 9
    assert moved("simsvc_queue_wait_seconds_count") == 9
    assert moved("simsvc_inference_seconds_count") >= 1
    assert moved("simsvc_batch_size_count") == moved("simsvc_inference_seconds_count")
    assert moved("simsvc_batch_tokens_sum") >= moved("simsvc_tokens_total")
    # Similarity dedupes its 4 texts to 3 per request: "a man plays" (5 tokens), "x y" (4),
    # "cats" (3); embeddings counted from usage; the long text was cut to 32.
    assert moved("simsvc_tokens_total") == 5 * (5 + 4 + 3) + tokens + 32
    assert moved("simsvc_truncated_total") == 1
    assert moved("simsvc_pairs_scored_total") == 10
    assert moved("simsvc_pairs_similar_total") == 5  # the identical pairs
    assert value(after, "simsvc_similar_share") == 0.5
    assert moved("simsvc_similarity_probability_count") == 10
    assert value(after, "simsvc_queue_depth") == 0
    assert value(after, "simsvc_queue_capacity") == 64
    assert value(after, "simsvc_ready") == 1
    assert (
        value(
            after,
            "simsvc_model_info",
            model="fake-encoder",
            pooling="mean",
            bundle_sha="none",
            dims=str(DIMS),
        )
        == 1
    )


def test_queue_depth_rises_under_concurrent_load(
    make_client: Callable[..., TestClient], settings: Settings
) -> None:
    held = FakeEncoder(dims=DIMS)
    client = make_client(settings, engine_factory=fake_factory(held))
    # The encoder holds the first request's batch until the test has seen the seven others
    # queue behind it: the figure does not hang on thread timing on a loaded machine.
    held.gate, held.batches = threading.Event(), []
    held.entered.clear()

    def post(i: int) -> None:
        client.post("/embed", json={"inputs": [f"t {i} {j}" for j in range(4)]})

    workers = [threading.Thread(target=post, args=(i,)) for i in range(8)]
    workers[0].start()
    assert held.entered.wait(timeout=30)
    for w in workers[1:]:
        w.start()
    peak, deadline = 0.0, time.monotonic() + 30
    while peak < 32 and time.monotonic() < deadline:
        peak = max(peak, value(scrape(client), "simsvc_queue_depth"))
        time.sleep(0.01)
    held.gate.set()
    for w in workers:
        w.join()
    assert peak == 32, peak  # 8 requests x 4 texts: the held batch counts until it has run
    assert value(scrape(client), "simsvc_queue_depth") == 0
    assert held.batches[0] == 4 and max(held.batches[1:]) > 4  # the queued ones shared batches


def test_metrics_can_move_to_their_own_port(
    make_client: Callable[..., TestClient], settings: Settings
) -> None:
    client = make_client(
        settings.model_copy(update={"metrics_port": 9999}), engine_factory=fake_factory()
    )
    assert client.get("/metrics").status_code == 404
    import socket
    import urllib.request

    from prometheus_client import start_http_server

    metrics = client.app.state.simsvc.metrics  # type: ignore[attr-defined]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # What `simsvc serve --metrics-port` starts: the same page as /metrics, without `_created`.
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.scrape_view())
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            page = resp.read()
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert b"simsvc_requests_total" in page
    assert b"_created" not in page


def test_timing_headers_and_request_ids(client: TestClient) -> None:
    resp = client.post("/embed", json={"inputs": "x"}, headers={"x-request-id": "abc-123"})
    assert resp.headers["x-request-id"] == "abc-123"
    for h in ("x-total-time", "x-queue-time", "x-inference-time", "x-tokenization-time"):
        assert float(resp.headers[h]) >= 0.0
    other = client.post("/embed", json={"inputs": "x"}, headers={"x-request-id": "bad id!"})
    assert other.headers["x-request-id"] != "bad id!" and len(other.headers["x-request-id"]) == 32


def test_every_known_series_exists_at_zero_from_the_start(client: TestClient) -> None:
    """A series born with its first increment is invisible to rate() and increase(): those an
    alert or a dashboard reads so exist at 0; histograms read as quantiles do not (they would
    be most of the page)."""
    fresh = scrape(client)
    for error_type in ("queue_full", "internal", "validation", "not_ready", "text_too_long"):
        key = ("simsvc_errors_total", (("error_type", error_type),))
        assert fresh.get(key) == 0.0, error_type
    for route, method, status in (
        ("/embed", "POST", "429"),
        ("/embed", "POST", "500"),
        ("/v1/embeddings", "POST", "503"),
        ("/v1/similarity", "POST", "499"),
        ("/v1/collections/{name}/search", "POST", "404"),
        ("/v1/collections/{name}", "PUT", "201"),
    ):
        labels = tuple(sorted({"route": route, "method": method, "status": status}.items()))
        assert fresh.get(("simsvc_requests_total", labels)) == 0.0, (route, status)
        assert ("simsvc_request_duration_seconds_count", labels) not in fresh
    for reason in ("reconfigure", "recover"):
        assert fresh.get(("simsvc_index_rebuild_seconds_count", (("reason", reason),))) == 0.0
    assert not any(name == "simsvc_search_seconds_count" for name, _ in fresh)
    assert fresh.get(("simsvc_abandoned_texts_total", ())) == 0.0
    # Keys are not configured: their statuses cannot happen and are not there.
    labels = tuple(sorted({"route": "/embed", "method": "POST", "status": "401"}.items()))
    assert ("simsvc_requests_total", labels) not in fresh
