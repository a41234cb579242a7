"""What every client is told (issue 24): token ids, empty text, `truncate`, readable
validation errors, one value per limit, the metrics page, route-appropriate 424s, and the
NDJSON hint."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.api.conftest import fake_factory
from tests.fakes import FakeCrossEncoder

INTERNALS = ("<function", "functools", " at 0x", "pydantic", "<class")


@pytest.fixture
def full(make_client: Callable[..., TestClient], tmp_path: Path) -> TestClient:
    """Every route: collections on disk and the fake cross-encoder."""
    settings = Settings(
        max_texts_per_request=8,
        max_pairs_per_request=4,
        max_chars_per_text=200,
        max_rerank_texts=6,
        threads=1,
        data_dir=tmp_path / "data",
    )
    return make_client(settings, engine_factory=fake_factory(cross=FakeCrossEncoder()))


def message(resp: Any) -> str:
    body = resp.json()
    error = body["error"]
    return str(error["message"] if isinstance(error, dict) else error)


# 1. Token ids.


def test_token_ids_only_when_the_request_or_the_setting_says_they_are_the_models(
    client: TestClient, make_client: Callable[..., TestClient], settings: Settings
) -> None:
    ids = [[2034, 3793], [2117]]
    refused = client.post("/v1/embeddings", json={"input": ids})
    assert refused.status_code == 422
    body = refused.json()
    assert body["error"]["type"] == "validation" and body["error"]["param"] == "input"
    assert "check_embedding_ctx_length=False" in body["error"]["message"]
    assert client.post("/v1/embeddings", json={"input": [2034, 3793]}).status_code == 422
    said = client.post("/v1/embeddings", json={"input": ids, "token_ids": "model"})
    assert said.status_code == 200 and len(said.json()["data"]) == 2
    assert (
        client.post("/v1/embeddings", json={"input": ids, "token_ids": "tiktoken"}).status_code
        == 422
    )
    trusting = make_client(
        settings.model_copy(update={"accept_token_ids": True}), engine_factory=fake_factory()
    )
    assert trusting.post("/v1/embeddings", json={"input": ids}).status_code == 200


# 2. Empty and whitespace-only text.

BLANK_BODIES: list[tuple[str, Callable[[str], Any]]] = [
    ("/v1/embeddings", lambda t: {"input": t}),
    ("/v1/embeddings", lambda t: {"input": ["ok", t]}),
    ("/embed", lambda t: {"inputs": t}),
    ("/embed", lambda t: {"inputs": ["ok", t]}),
    ("/", lambda t: {"inputs": t}),
    ("/", lambda t: {"inputs": {"source_sentence": "ok", "sentences": [t]}}),
    ("/invocations", lambda t: {"inputs": [t]}),
    ("/v1/similarity", lambda t: {"pairs": [{"a": t, "b": t}]}),
    ("/v1/similarity", lambda t: {"pairs": [{"a": "ok", "b": t}], "mode": "cross"}),
    ("/similarity", lambda t: {"inputs": {"source_sentence": t, "sentences": ["ok"]}}),
    ("/rerank", lambda t: {"query": t, "texts": ["ok"]}),
    ("/rerank", lambda t: {"query": "ok", "texts": ["ok", t]}),
    ("/predict", lambda t: {"inputs": t}),
    ("/predict", lambda t: {"inputs": ["ok", t]}),
    ("/predict", lambda t: {"inputs": [["ok"], [t]]}),
    ("/v1/collections/c/documents", lambda t: {"documents": [{"id": "d", "text": t}]}),
    ("/v1/collections/c/search", lambda t: {"query": t}),
]


@pytest.mark.parametrize("blank", ["", " ", "\t\n ", "\u3000"])
def test_empty_and_whitespace_text_is_a_422_on_every_route(full: TestClient, blank: str) -> None:
    full.post("/v1/collections/c/documents", json={"documents": [{"id": "x", "text": "ok"}]})
    for path, make in BLANK_BODIES:
        resp = full.post(path, json=make(blank))
        assert resp.status_code == 422, (path, blank, resp.text)
        assert resp.json()["error_type"] == "validation"
        assert "non-whitespace" in message(resp), (path, resp.text)
        assert isinstance(resp.json()["error"], dict) == path.startswith("/v1/")
    # The schema states the same rule, so a client or a fuzzer generating from it agrees.
    document = full.get("/openapi.json").json()
    text = document["components"]["schemas"]["Pair"]["properties"]["a"]
    assert text["minLength"] == 1 and re.search(text["pattern"], blank) is None
    assert re.search(text["pattern"], f"{blank}x{blank}")
    ndjson = full.post(
        "/v1/collections/c/documents",
        content=f'{{"id": "d", "text": "{blank.encode("unicode_escape").decode()}"}}\n'.encode(),
        headers={"content-type": "application/x-ndjson"},
    )
    assert ndjson.status_code == 422 and "non-whitespace" in message(ndjson), ndjson.text


# 3. truncate on /v1/embeddings.


def test_v1_embeddings_truncate_is_honoured(client: TestClient) -> None:
    long_text = " ".join(f"w{i}" for i in range(40))  # the fake encoder takes 32 tokens
    cut = client.post("/v1/embeddings", json={"input": long_text})
    assert cut.status_code == 200
    assert (
        client.post("/v1/embeddings", json={"input": long_text, "truncate": True}).json()["data"]
        == cut.json()["data"]
    )
    refused = client.post("/v1/embeddings", json={"input": [long_text], "truncate": False})
    assert refused.status_code == 413 and refused.json()["error_type"] == "text_too_long"
    ids = list(range(2000, 2060))
    as_ids = client.post(
        "/v1/embeddings", json={"input": ids, "token_ids": "model", "truncate": False}
    )
    assert as_ids.status_code == 413 and as_ids.json()["error"]["param"] == "input"
    short = client.post("/v1/embeddings", json={"input": "a b", "truncate": False})
    assert short.status_code == 200
    assert client.post("/v1/embeddings", json={"input": "a", "truncate": "no"}).status_code == 422


# 4. Validation errors: path, given, allowed; no Python internals.

WRONG_VALUES: list[Any] = ["x", -1, 1.5, True, None, {}, [], [{}], [-1], [[-5]], {"a": [1]}]


def _bodies(schema: dict[str, Any], document: dict[str, Any]) -> Iterator[Any]:
    """Bodies with one property replaced by a wrong value, one level of nesting deep, and a
    few wrong bodies as a whole."""
    yield from ([], "text", 3, None)
    resolved = _resolve(schema, document)
    branches = resolved.get("anyOf", [resolved])
    for branch in branches:
        branch = _resolve(branch, document)
        props = branch.get("properties", {})
        for name, prop in props.items():
            for wrong in WRONG_VALUES:
                yield {name: wrong}
            inner = _resolve(prop, document)
            for sub in inner.get("anyOf", [inner]):
                sub = _resolve(sub, document)
                for child in sub.get("properties", {}):
                    for wrong in WRONG_VALUES:
                        yield {name: {child: wrong}}
                items = _resolve(sub.get("items", {}), document)
                for child in items.get("properties", {}):
                    for wrong in WRONG_VALUES:
                        yield {name: [{child: wrong}]}


def _resolve(node: dict[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = document["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def test_every_route_answers_wrong_types_in_words(full: TestClient) -> None:
    document = full.get("/openapi.json").json()
    checked = 0
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            content = op.get("requestBody", {}).get("content", {})
            schema = content.get("application/json", {}).get("schema")
            if schema is None:
                continue
            url = (
                path.replace("{name}", "c")
                .replace("{doc_id:path}", "d")
                .replace("{model:path}", "m")
            )
            for body in _bodies(schema, document):
                resp = full.request(method.upper(), url, json=body)
                assert resp.status_code < 500, (path, body, resp.text)
                if resp.status_code >= 400:
                    text = message(resp)
                    assert not any(bad in text for bad in INTERNALS), (path, body, text)
                    assert isinstance(resp.json()["error"], dict) == path.startswith("/v1/")
                    checked += 1
    assert checked > 500


def test_a_wrong_type_names_the_field_what_was_given_and_what_is_allowed(
    client: TestClient,
) -> None:
    resp = client.post("/v1/embeddings", json={"input": {"a": 1}})
    assert resp.status_code == 422
    error = resp.json()["error"]
    assert error["param"] == "input"
    assert error["message"] == (
        "input: must be a string, or a list of strings, or a list of integers, or a list of "
        'lists of integers (got {"a":1})'
    )
    negative = client.post("/v1/embeddings", json={"input": [[3, -1]], "token_ids": "model"})
    assert negative.json()["error"]["message"] == "input.0.1: must be >= 0 (got -1)"
    k = client.post("/embed", json={"inputs": "a", "dimensions": "5"})
    assert k.json() == {
        "error": 'dimensions: must be an integer (got "5")',
        "error_type": "validation",
    }


# 5. One value per limit, in the schema and in the error.


def _schema_max(document: dict[str, Any], *path: str) -> int:
    node: Any = document["components"]["schemas"]
    for key in path:
        node = _resolve(node, document)[key] if key != "*" else node
        if isinstance(node, dict) and "anyOf" in node and key != path[-1]:
            node = next(b for b in node["anyOf"] if b.get("type") != "null")
    node = _resolve(node, document)
    for branch in node.get("anyOf", [node]):
        for keyword in ("maximum", "maxItems", "maxLength"):
            if keyword in branch:
                return int(branch[keyword])
    raise AssertionError(f"no maximum at {path}: {node}")


def test_the_schema_and_the_error_state_the_same_limit(full: TestClient) -> None:
    document = full.get("/openapi.json").json()
    hnsw = _schema_max(document, "HnswParams", "properties", "m")
    ivf = _schema_max(document, "IvfParams", "properties", "nprobe")
    sentences = _schema_max(document, "TEISimilarityInputs", "properties", "sentences")
    texts = _schema_max(document, "RerankRequest", "properties", "texts")
    pairs = _schema_max(document, "SimilarityRequest", "properties", "pairs")
    k = _schema_max(document, "SearchRequest", "properties", "k")
    full.post("/v1/collections/c/documents", json={"documents": [{"id": "x", "text": "ok"}]})
    cases = [
        ("PUT", "/v1/collections/c", {"index": {"kind": "hnsw", "params": {"m": hnsw + 1}}}, hnsw),
        ("PUT", "/v1/collections/c", {"index": {"kind": "hnsw", "params": {"m": 300}}}, hnsw),
        (
            "PUT",
            "/v1/collections/c",
            {"index": {"kind": "ivf", "params": {"nprobe": ivf + 1}}},
            ivf,
        ),
        (
            "POST",
            "/similarity",
            {"inputs": {"source_sentence": "a", "sentences": ["b"] * (sentences + 1)}},
            sentences,
        ),
        ("POST", "/rerank", {"query": "a", "texts": ["b"] * (texts + 1)}, texts),
        ("POST", "/v1/similarity", {"pairs": [{"a": "a", "b": "b"}] * (pairs + 1)}, pairs),
        ("POST", "/v1/collections/c/search", {"query": "a", "k": k + 1}, k),
    ]
    for method, url, body, limit in cases:
        resp = full.request(method, url, json=body)
        assert 400 <= resp.status_code < 500, (url, resp.text)
        text = message(resp)
        stated = {int(n) for n in re.findall(r"(?:limit is|<=|\.\.|at most) ?(\d+)", text)}
        assert stated == {limit}, (url, limit, text)
    assert hnsw == 64 and sentences == 8  # the settings', not PARAM_RANGES' or one more


# 6. The metrics page.


def test_a_fresh_metrics_page_is_lean_and_has_no_created_series(full: TestClient) -> None:
    page = full.get("/metrics").text
    assert len(page.encode()) <= 100_000, len(page)
    assert "_created" not in page
    # The series alerts and dashboards read with rate()/increase() still exist at 0.
    assert 'simsvc_errors_total{error_type="queue_full"} 0.0' in page
    assert 'simsvc_requests_total{method="POST",route="/embed",status="500"} 0.0' in page
    assert 'simsvc_index_rebuild_seconds_count{reason="reconfigure"} 0.0' in page


# 7. Route-appropriate messages.


def test_rerank_and_predict_without_a_cross_encoder_name_their_route(client: TestClient) -> None:
    for path, body in (
        ("/rerank", {"query": "a", "texts": ["b"]}),
        ("/predict", {"inputs": ["a", "b"]}),
    ):
        resp = client.post(path, json=body)
        assert resp.status_code == 424, resp.text
        text = message(resp)
        assert path in text and "mode 'bi'" not in text and "--cross-model" in text
    bi = client.post("/v1/similarity", json={"pairs": [{"a": "a", "b": "b"}], "mode": "cross"})
    assert bi.status_code == 424 and "mode 'bi'" in message(bi)


def test_ndjson_sent_as_json_gets_a_hint(full: TestClient) -> None:
    lines = b'{"id": "a", "text": "one"}\n{"id": "b", "text": "two"}\n'
    resp = full.post(
        "/v1/collections/c/documents", content=lines, headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422 and "application/x-ndjson" in message(resp), resp.text
    plain = full.post(
        "/v1/collections/c/documents", content=b"{", headers={"content-type": "application/json"}
    )
    assert plain.status_code == 422 and "ndjson" not in message(plain)


def test_the_blank_characters_are_unicodes_whitespace_control_and_format_characters() -> None:
    """The fixed list behind the schema's pattern and the check is what `unicodedata` says
    (a Python with a newer Unicode may add characters; then the list is extended)."""
    import sys
    import unicodedata

    from service.api.schemas import BLANK_RANGES

    listed = {c for a, b in BLANK_RANGES for c in range(a, b + 1)}
    blank = {
        c
        for c in range(sys.maxunicode + 1)
        if chr(c).isspace() or unicodedata.category(chr(c)) in {"Cc", "Cf", "Zs", "Zl", "Zp"}
    }
    assert blank <= listed
    assert all(
        unicodedata.category(chr(c)) in {"Cc", "Cf", "Zs", "Zl", "Zp"}
        or chr(c).isspace()
        or unicodedata.category(chr(c)) == "Cn"
        for c in listed
    )


def test_the_openapi_document_says_token_ids_need_token_ids_model(
    client: TestClient, make_client: Callable[..., TestClient], settings: Settings
) -> None:
    """A fuzzer (or a client generator) reads the rule from the schema, so valid-by-schema
    bodies are accepted: token ids without `token_ids: "model"` are not valid by it."""
    import jsonschema  # type: ignore[import-untyped]  # (schemathesis brings it)

    def schema_of(c: TestClient) -> dict[str, Any]:
        document = c.get("/openapi.json").json()
        return dict(document["components"]["schemas"]["OpenAIEmbeddingRequest"])

    strict = jsonschema.Draft202012Validator(schema_of(client))
    assert not strict.is_valid({"input": [[1, 2]]}) and not strict.is_valid({"input": [1]})
    assert strict.is_valid({"input": [[1, 2]], "token_ids": "model"})
    assert strict.is_valid({"input": ["a b"]}) and strict.is_valid({"input": "a"})
    trusting = make_client(
        settings.model_copy(update={"accept_token_ids": True}), engine_factory=fake_factory()
    )
    assert jsonschema.Draft202012Validator(schema_of(trusting)).is_valid({"input": [[1, 2]]})
