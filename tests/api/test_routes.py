"""The HTTP contract: shapes of every route, and one error shape with the right codes."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator

import numpy as np
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.api.conftest import DIMS, fake_factory
from tests.fakes import FakeEncoder


def _error(resp: object, status: int, error_type: str) -> dict[str, str]:
    assert resp.status_code == status, resp.text  # type: ignore[attr-defined]
    body = resp.json()  # type: ignore[attr-defined]
    assert set(body) == {"error", "error_type"} and body["error_type"] == error_type, body
    return dict(body)


def test_similarity_scores_pairs_with_head(client: TestClient) -> None:
    resp = client.post(
        "/v1/similarity",
        json={
            "pairs": [
                {"a": "a man plays the guitar", "b": "a man plays the guitar"},
                {"a": "a man plays the guitar", "b": "the cat sleeps in the sun"},
            ]
        },
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["model"] == "fake-encoder"
    same, other = body["results"]
    assert same["score"] > 0.99 and same["score"] > other["score"]
    assert same["probability"] > other["probability"]
    assert same["similar"] is True and other["similar"] is False
    for header in ("x-inference-time", "x-queue-time", "x-total-time", "x-request-id"):
        assert header in resp.headers


def test_tei_similarity_matches_cosines_of_embed(client: TestClient) -> None:
    src, others = (
        "the dog runs in the park",
        ["the dog runs", "a red car", "the dog runs in the park"],
    )
    scores = client.post(
        "/similarity", json={"inputs": {"source_sentence": src, "sentences": others}}
    ).json()
    vecs = np.array(client.post("/embed", json={"inputs": [src, *others]}).json())
    assert np.allclose(scores, vecs[1:] @ vecs[0], atol=1e-5)
    assert scores[2] > 0.999


def test_openai_embeddings_float_base64_and_dimensions(client: TestClient) -> None:
    body = client.post(
        "/v1/embeddings", json={"input": ["hello world", "hi"], "model": "anything"}
    ).json()
    assert body["object"] == "list" and body["model"] == "fake-encoder"
    assert [d["index"] for d in body["data"]] == [0, 1]
    floats = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert floats.shape == (2, DIMS)
    assert np.allclose(np.linalg.norm(floats, axis=1), 1.0, atol=1e-5)
    assert body["usage"] == {"prompt_tokens": 4 + 3, "total_tokens": 7}
    b64 = client.post(
        "/v1/embeddings", json={"input": ["hello world", "hi"], "encoding_format": "base64"}
    ).json()
    decoded = np.stack(
        [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in b64["data"]]
    )
    assert np.array_equal(decoded, floats)
    cut = client.post("/v1/embeddings", json={"input": "hello world", "dimensions": 4}).json()
    vec = np.array(cut["data"][0]["embedding"])
    assert vec.shape == (4,) and abs(np.linalg.norm(vec) - 1) < 1e-5
    _error(client.post("/v1/embeddings", json={"input": "x", "dimensions": 99}), 422, "validation")


def test_embed_pooling_whitening_and_normalize(client: TestClient) -> None:
    one = client.post("/embed", json={"inputs": "the sun"}).json()
    assert len(one) == 1 and len(one[0]) == DIMS
    raw = np.array(
        client.post(
            "/embed", json={"inputs": "the sun", "pooling": "cls", "normalize": False}
        ).json()
    )
    expected = FakeEncoder(dims=DIMS).infer(FakeEncoder(dims=DIMS).tokenize(["the sun"]))["cls"]
    assert np.allclose(raw, expected)
    white = np.array(client.post("/embed", json={"inputs": "the sun", "whiten": True}).json())
    plain = np.array(client.post("/embed", json={"inputs": "the sun", "whiten": False}).json())
    assert not np.allclose(white, plain)
    _error(
        client.post("/embed", json={"inputs": "x", "pooling": "cls", "whiten": True}),
        422,
        "validation",
    )
    _error(client.post("/embed", json={"inputs": "x", "pooling": "max"}), 422, "validation")
    # Raw vectors cut to fewer dimensions (a column slice: once a 500 from the JSON encoder).
    for normalize in (True, False):
        body = {"inputs": ["the sun", "x"], "whiten": False, "dimensions": 3}
        cut = np.array(client.post("/embed", json={**body, "normalize": normalize}).json())
        assert cut.shape == (2, 3)


def test_limits_answer_413(client: TestClient) -> None:
    _error(client.post("/embed", json={"inputs": ["t"] * 9}), 413, "too_many_texts")
    _error(
        client.post("/v1/similarity", json={"pairs": [{"a": "x", "b": "y"}] * 5}),
        413,
        "too_many_texts",
    )
    _error(client.post("/embed", json={"inputs": "x" * 201}), 413, "text_too_long")


def test_truncation_is_default_and_truncate_false_is_413(client: TestClient) -> None:
    long = " ".join(["w"] * 60)  # 119 characters; the fake encoder keeps 32 tokens
    assert client.post("/embed", json={"inputs": long}).status_code == 200
    err = _error(
        client.post("/embed", json={"inputs": long, "truncate": False}), 413, "text_too_long"
    )
    assert "32 tokens" in err["error"]
    _error(
        client.post("/v1/similarity", json={"pairs": [{"a": long, "b": "x"}], "truncate": False}),
        413,
        "text_too_long",
    )


def test_malformed_and_mistyped_bodies_are_422(client: TestClient) -> None:
    _error(
        client.post("/embed", content=b"{not json", headers={"content-type": "application/json"}),
        422,
        "validation",
    )
    _error(client.post("/embed", json={"inputs": [1, 2]}), 422, "validation")
    _error(client.post("/v1/similarity", json={"pairs": [{"a": "x"}]}), 422, "validation")
    _error(client.post("/v1/similarity", json={"pairs": []}), 422, "validation")
    _error(client.post("/embed", json={"inputs": []}), 422, "validation")


def test_body_limit_is_413_with_or_without_content_length(client: TestClient) -> None:
    big = {"inputs": ["x" * 150] * 40}
    _error(client.post("/embed", json=big), 413, "body_too_large")

    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": ["'
        for _ in range(100):
            yield b"y" * 100
        yield b'"]}'

    _error(
        client.post("/embed", content=chunks(), headers={"content-type": "application/json"}),
        413,
        "body_too_large",
    )


def test_unknown_route_and_method_share_the_error_shape(client: TestClient) -> None:
    _error(client.get("/nope"), 404, "not_found")
    _error(client.get("/v1/similarity"), 405, "method_not_allowed")


def test_queue_full_is_429_with_retry_after(
    make_client: Callable[..., TestClient], settings: Settings
) -> None:
    import threading

    slow = FakeEncoder(dims=DIMS, delay=0.5)
    tight = settings.model_copy(update={"max_queue_texts": 8, "retry_after_seconds": 2})
    client = make_client(tight, engine_factory=fake_factory(slow))
    results: list[int] = []

    def hit() -> None:
        results.append(client.post("/embed", json={"inputs": ["a b"] * 8}).status_code)

    seen = len(slow.batches)  # the warm-up batch ran already
    first = threading.Thread(target=hit)
    first.start()
    import time

    deadline = time.monotonic() + 5
    while len(slow.batches) == seen and time.monotonic() < deadline:
        time.sleep(0.01)
    resp = client.post("/embed", json={"inputs": ["c d"] * 2})
    first.join()
    _error(resp, 429, "queue_full")
    assert resp.headers["retry-after"] == "2"
    assert results == [200]


def test_ready_is_503_until_the_engine_is_warm(
    make_client: Callable[..., TestClient], settings: Settings
) -> None:
    import threading

    gate = threading.Event()
    factory = fake_factory()

    def slow_factory(s: Settings, m: object) -> object:
        gate.wait(10)
        return factory(s, m)  # type: ignore[arg-type]

    client = make_client(settings, wait=False, engine_factory=slow_factory)
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 503
    _error(client.post("/embed", json={"inputs": "x"}), 503, "not_ready")
    gate.set()
    from tests.conftest import wait_ready

    wait_ready(client)
    assert client.post("/embed", json={"inputs": "x"}).status_code == 200


def test_a_failing_model_load_is_reported_by_ready(
    make_client: Callable[..., TestClient], settings: Settings
) -> None:
    def broken(s: Settings, m: object) -> object:
        raise RuntimeError("cannot open model.onnx")

    client = make_client(settings, wait=False, engine_factory=broken)
    import time

    for _ in range(100):
        body = client.get("/ready").json()
        if "cannot open" in body.get("reason", ""):
            break
        time.sleep(0.02)
    assert client.get("/ready").status_code == 503
    assert "cannot open model.onnx" in client.get("/ready").json()["reason"]


def test_inference_failure_is_500_without_internals(
    make_client: Callable[..., TestClient], settings: Settings
) -> None:
    core = FakeEncoder(dims=DIMS)
    client = make_client(settings, engine_factory=fake_factory(core))
    core.fail = RuntimeError("secret path /opt/model is broken")
    err = _error(client.post("/embed", json={"inputs": "x"}), 500, "internal")
    assert "secret" not in err["error"] and "request id" in err["error"]


def test_info_describes_model_and_limits(client: TestClient) -> None:
    info = client.get("/info").json()
    assert info["model"] == "fake-encoder" and info["pooling"] == "mean"
    assert info["dims"] == {"hidden": DIMS, "output": DIMS}
    assert info["whitening"]["fitted"] is True
    assert info["head"]["kind"] == "lr"
    assert info["limits"]["max_texts_per_request"] == 8
    assert "onnxruntime" in info["versions"]


def test_openapi_lists_the_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for p in (
        "/v1/similarity",
        "/similarity",
        "/v1/embeddings",
        "/embed",
        "/health",
        "/ready",
        "/info",
    ):
        assert p in paths


def test_tei_root_and_invocations_dispatch_by_payload(client: TestClient) -> None:
    texts = ["the dog runs", "a red car"]
    embedded = client.post("/embed", json={"inputs": texts}).json()
    for path in ("/", "/invocations"):
        assert client.post(path, json={"inputs": texts}).json() == embedded
        one = client.post(path, json={"inputs": "the dog runs", "parameters": {}}).json()
        assert one == embedded[:1]
        cut = client.post(path, json={"inputs": "x", "parameters": {"dimensions": 4}}).json()
        assert len(cut[0]) == 4
        raw = client.post(path, json={"inputs": "x", "parameters": {"normalize": False}}).json()
        assert abs(float(np.linalg.norm(raw[0])) - 1.0) > 1e-3
        pair = {"source_sentence": "the dog runs", "sentences": ["the dog runs", "a red car"]}
        scores = client.post(path, json={"inputs": pair}).json()
        assert scores == client.post("/similarity", json={"inputs": pair}).json()
        assert scores[0] > 0.999 > scores[1]
        _error(client.post(path, json={"inputs": {"source_sentence": "x"}}), 422, "validation")
        _error(client.post(path, json={"nothing": 1}), 422, "validation")
        _error(client.post(path, json={"inputs": ["t"] * 9}), 413, "too_many_texts")


def test_openai_token_id_input_is_the_models_vocabulary(client: TestClient) -> None:
    core = FakeEncoder(dims=DIMS)
    ids = [list(t.ids[1:-1]) for t in core.tokenize(["hello world", "hi"])]
    by_text = client.post("/v1/embeddings", json={"input": ["hello world", "hi"]}).json()
    model_ids = {"token_ids": "model"}
    by_ids = client.post("/v1/embeddings", json={"input": ids, **model_ids}).json()
    assert [d["embedding"] for d in by_ids["data"]] == [d["embedding"] for d in by_text["data"]]
    assert by_ids["usage"] == by_text["usage"]
    one = client.post("/v1/embeddings", json={"input": ids[0], **model_ids}).json()
    assert one["data"][0]["embedding"] == by_text["data"][0]["embedding"]

    def problem(body: object) -> dict[str, object]:
        resp = client.post("/v1/embeddings", json={"input": body, **model_ids})
        assert resp.status_code == 422, resp.text
        return dict(resp.json()["error"])

    assert "vocabulary of 31000" in str(problem([5, 31_000])["message"])
    assert problem([[1], []])["param"] == "input"
    assert problem([-1])["param"] is not None
    assert client.post("/v1/embeddings", json={"input": [[1]] * 9, **model_ids}).status_code == 413


def test_openai_models_lists_the_served_model(client: TestClient) -> None:
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == ["fake-encoder"]
    assert client.get("/v1/models/fake-encoder").json()["object"] == "model"
    missing = client.get("/v1/models/gpt-4")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
