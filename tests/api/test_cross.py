"""The cross-encoder routes on the deterministic fake cross-encoder: /v1/similarity mode cross,
TEI's /rerank and /predict (shapes exactly as TEI answers), limits, 424 without one, 429."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict, TypeAdapter

from service.settings import Settings
from tests.api.conftest import CROSS_CALIBRATION, fake_factory
from tests.api.test_metrics import scrape, value
from tests.fakes import FakeCrossEncoder

QUERY = "a man plays the guitar in the park"
TEXTS = [
    "the cat sleeps",  # no overlap
    "a man plays the guitar in the park",  # all
    "a man plays the piano",  # some
    "the guitar",  # a little
]


def fake_logit(a: str, b: str) -> float:
    """What FakeCrossEncoder computes: 6 * Jaccard of the word sets - 3."""
    wa, wb = set(a.lower().split()), set(b.lower().split())
    return 6.0 * len(wa & wb) / len(wa | wb) - 3.0


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class TEIRank(BaseModel):
    """TEI's Rank (openapi.json): index >= 0, score, optional text; nothing else."""

    model_config = ConfigDict(extra="forbid")
    index: int
    score: float
    text: str | None = None


class TEIPrediction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score: float
    label: str


@pytest.fixture
def cross_client(make_client: Callable[..., TestClient], settings: Settings) -> TestClient:
    return make_client(settings, engine_factory=fake_factory(cross=FakeCrossEncoder()))


def _error(resp: Any, status: int, error_type: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.json()["error_type"] == error_type, resp.json()


def test_similarity_mode_cross_scores_with_the_cross_encoder(cross_client: TestClient) -> None:
    pairs = [(QUERY, t) for t in TEXTS[:3]]
    body = {"pairs": [{"a": a, "b": b} for a, b in pairs], "mode": "cross"}
    resp = cross_client.post("/v1/similarity", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == "fake-cross"
    for (a, b), r in zip(pairs, resp.json()["results"], strict=True):
        raw = fake_logit(a, b)
        assert r["score"] == pytest.approx(sigmoid(raw), abs=1e-6)
        expected = float(
            CROSS_CALIBRATION(np.array([raw]))[0]
        )  # calibrated, not the model's own sigmoid
        assert r["probability"] == pytest.approx(expected, abs=1e-6)
        assert r["probability"] != pytest.approx(r["score"], abs=1e-3)
        assert r["similar"] is (expected >= 0.5)
    assert "x-inference-time" in resp.headers
    bi = cross_client.post("/v1/similarity", json={**body, "mode": "bi"}).json()
    assert bi["model"] == "fake-encoder"  # the default mode is untouched
    assert cross_client.post("/v1/similarity", json={**body, "mode": "x"}).status_code == 422


def test_rerank_answers_in_tei_shape_sorted_by_score(cross_client: TestClient) -> None:
    resp = cross_client.post("/rerank", json={"query": QUERY, "texts": TEXTS})
    assert resp.status_code == 200, resp.text
    ranks = TypeAdapter(list[TEIRank]).validate_python(resp.json())
    assert all("text" not in r for r in resp.json())  # TEI omits it unless asked
    assert [r.index for r in ranks] == [1, 2, 3, 0]
    for r in ranks:
        assert r.score == pytest.approx(sigmoid(fake_logit(QUERY, TEXTS[r.index])), abs=1e-6)
    raw = cross_client.post(
        "/rerank", json={"query": QUERY, "texts": TEXTS, "raw_scores": True, "return_text": True}
    ).json()
    assert [r["index"] for r in raw] == [1, 2, 3, 0]
    for r in TypeAdapter(list[TEIRank]).validate_python(raw):
        assert r.text == TEXTS[r.index]
        assert r.score == pytest.approx(fake_logit(QUERY, TEXTS[r.index]), abs=1e-6)


def test_rerank_truncation_and_limits(
    make_client: Callable[..., TestClient], settings: Settings
) -> None:
    client = make_client(
        settings.model_copy(update={"max_rerank_texts": 3}),
        engine_factory=fake_factory(cross=FakeCrossEncoder(max_length=8)),
    )
    long = " ".join(["guitar"] * 20)
    _error(client.post("/rerank", json={"query": "q", "texts": ["a"] * 4}), 413, "too_many_texts")
    _error(client.post("/rerank", json={"query": "q", "texts": []}), 422, "validation")
    ok = client.post("/rerank", json={"query": "guitar", "texts": [long, "guitar"]})
    assert ok.status_code == 200
    _error(
        client.post("/rerank", json={"query": "guitar", "texts": [long], "truncate": False}),
        413,
        "text_too_long",
    )
    _error(client.post("/rerank", json={"query": "x" * 201, "texts": ["a"]}), 413, "text_too_long")
    # left truncation keeps the end: the query is cut away and the pair scores differently
    right = client.post("/rerank", json={"query": "guitar a", "texts": [long]}).json()
    left = client.post(
        "/rerank", json={"query": "guitar a", "texts": [long], "truncation_direction": "Left"}
    ).json()
    assert right[0]["score"] != pytest.approx(left[0]["score"])


def test_predict_single_pair_and_batch_in_tei_shapes(cross_client: TestClient) -> None:
    single = cross_client.post("/predict", json={"inputs": "a man plays"}).json()
    assert TypeAdapter(list[TEIPrediction]).validate_python(single)[0].label == "similar"
    pair = cross_client.post("/predict", json={"inputs": [QUERY, TEXTS[2]]}).json()
    (p,) = TypeAdapter(list[TEIPrediction]).validate_python(pair)
    assert p.score == pytest.approx(sigmoid(fake_logit(QUERY, TEXTS[2])), abs=1e-6)
    batch = cross_client.post(
        "/predict", json={"inputs": [[QUERY, TEXTS[1]], ["alone"]], "raw_scores": True}
    ).json()
    rows = TypeAdapter(list[list[TEIPrediction]]).validate_python(batch)
    assert rows[0][0].score == pytest.approx(3.0, abs=1e-6)  # identical word sets
    assert len(rows) == 2 and all(len(r) == 1 for r in rows)
    _error(cross_client.post("/predict", json={"inputs": ["one"]}), 422, "validation")
    _error(cross_client.post("/predict", json={"inputs": [["a", "b", "c"]]}), 422, "validation")
    _error(cross_client.post("/predict", json={"inputs": [["a", "b"]] * 5}), 413, "too_many_texts")


def test_predict_with_two_labels_is_a_softmax_sorted_best_first(
    make_client: Callable[..., TestClient], settings: Settings
) -> None:
    client = make_client(settings, engine_factory=fake_factory(cross=FakeCrossEncoder(2)))
    preds = client.post("/predict", json={"inputs": [QUERY, TEXTS[0]]}).json()
    assert [p["label"] for p in preds] == ["dissimilar", "similar"]
    assert sum(p["score"] for p in preds) == pytest.approx(1.0)
    similar = next(p["score"] for p in preds if p["label"] == "similar")
    # softmax(-x/2, x/2)[1] == sigmoid(x): two-label checkpoints score like one-label ones
    assert similar == pytest.approx(sigmoid(fake_logit(QUERY, TEXTS[0])), abs=1e-6)
    ranks = client.post("/rerank", json={"query": QUERY, "texts": TEXTS}).json()
    assert [r["index"] for r in ranks] == [1, 2, 3, 0]


def test_cross_routes_without_a_cross_encoder_are_424(client: TestClient) -> None:
    pairs = {"pairs": [{"a": "x", "b": "y"}], "mode": "cross"}
    for path, body in (
        ("/v1/similarity", pairs),
        ("/rerank", {"query": "q", "texts": ["a"]}),
        ("/predict", {"inputs": ["a", "b"]}),
    ):
        resp = client.post(path, json=body)
        _error(resp, 424, "no_cross_encoder")
        error = resp.json()["error"]  # OpenAI's shape on /v1, TEI's elsewhere
        assert "--cross-model" in (error["message"] if isinstance(error, dict) else error)
    assert client.get("/info").json()["cross_encoder"] is None
    assert client.post("/v1/similarity", json={**pairs, "mode": "bi"}).status_code == 200


def test_info_reports_the_cross_encoder(cross_client: TestClient) -> None:
    info = cross_client.get("/info").json()
    cross = info["cross_encoder"]
    assert cross["model"] == "fake-cross" and cross["labels"] == ["similar"]
    assert cross["calibration"]["kind"] == "sigmoid" and cross["max_length"] == 32
    assert info["limits"]["max_rerank_texts"] == 128


def test_cross_queue_full_is_429_with_retry_after(
    make_client: Callable[..., TestClient], settings: Settings
) -> None:
    slow = FakeCrossEncoder(delay=0.5)
    client = make_client(
        settings.model_copy(update={"cross_max_queue_pairs": 4, "retry_after_seconds": 3}),
        engine_factory=fake_factory(cross=slow),
    )
    body = {"query": "q", "texts": ["a b", "c d", "e f", "g h"]}
    first: dict[str, int] = {}

    def fill() -> None:
        first["status"] = client.post("/rerank", json=body).status_code

    seen = len(slow.batches)  # the warm-up's
    worker = threading.Thread(target=fill)
    worker.start()
    deadline = time.monotonic() + 5
    while len(slow.batches) == seen and time.monotonic() < deadline:
        time.sleep(0.01)
    resp = client.post("/rerank", json={"query": "q", "texts": ["x"]})
    worker.join()
    _error(resp, 429, "queue_full")
    assert resp.headers["retry-after"] == "3"
    assert first["status"] == 200
    # the bi-encoder has its own queue: it still answers
    assert client.post("/v1/similarity", json={"pairs": [{"a": "x", "b": "y"}]}).status_code == 200


def test_cross_metrics_move_with_cross_traffic(cross_client: TestClient) -> None:
    before = scrape(cross_client)
    for _ in range(3):
        assert (
            cross_client.post("/rerank", json={"query": QUERY, "texts": TEXTS}).status_code == 200
        )
    after = scrape(cross_client)

    def moved(name: str) -> float:
        return value(after, name) - value(before, name)

    assert moved("simsvc_cross_pairs_scored_total") == 3 * len(TEXTS)
    assert moved("simsvc_cross_tokenize_seconds_count") == 3
    assert moved("simsvc_cross_queue_wait_seconds_count") == 3
    assert moved("simsvc_cross_batch_size_sum") == 3 * len(TEXTS)
    assert moved("simsvc_cross_tokens_total") > 0
    assert moved("simsvc_tokenize_seconds_count") == 0  # the bi-encoder's stages did not move
    assert value(after, "simsvc_cross_queue_capacity") == 1024
    assert value(after, "simsvc_cross_queue_depth") == 0
