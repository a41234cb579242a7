"""The API's promises from issue 13: no 500 from any input, strict types, bounded filters and
index parameters, one error shape per route family, honest 405s, server errors that neither
drop the connection nor log twice, documentation that works offline (log forging: in
test_logs.py)."""

from __future__ import annotations

import http.client
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from tests.api.conftest import fake_factory
from tests.fakes import FakeEncoder
from tests.serving import live_server

Client = Callable[..., TestClient]
JSON = {"content-type": "application/json"}


def _problem(resp: Any, status: int, error_type: str) -> str:
    """The error's message, after checking its status and type (either error shape)."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error_type"] == error_type, body
    error = body["error"]
    return str(error["message"] if isinstance(error, dict) else error)


@pytest.fixture
def cclient(make_client: Client, settings: Settings, tmp_path: Path) -> TestClient:
    tuned = settings.model_copy(
        update={
            "data_dir": tmp_path / "data",
            "max_body_bytes": 65536,
            "max_filter_keys": 4,
            "max_filter_key_chars": 16,
            "max_filter_value_chars": 32,
            "hnsw_max_ef_search": 4096,
        }
    )
    client = make_client(tuned, engine_factory=fake_factory())
    docs = [
        {"id": f"d{i}", "text": f"the dog number {i} runs", "metadata": {"n": i}} for i in range(6)
    ]
    resp = client.post("/v1/collections/c/documents", json={"documents": docs})
    assert resp.status_code == 200, resp.text
    return client


# Finding 1: a lone surrogate anywhere a text goes.
SURROGATES = [
    ("/v1/embeddings", r'{"input": ["x\ud800y"]}'),
    ("/v1/embeddings", r'{"input": "\udc00"}'),
    ("/embed", r'{"inputs": ["x\ud800y"]}'),
    ("/v1/similarity", r'{"pairs": [{"a": "x\ud800y", "b": "z"}]}'),
    ("/similarity", r'{"inputs": {"source_sentence": "x\udc00", "sentences": ["y"]}}'),
    ("/v1/collections/c/search", r'{"query": "dog", "filter": {"k\ud800": "v"}}'),
    ("/v1/collections/c/search", r'{"query": "dog", "filter": {"n": "v\ud800"}}'),
    ("/v1/collections/c/search", r'{"query": "dog\ud800"}'),
    ("/v1/collections/c/documents", r'{"documents": [{"id": "a", "text": "x\ud800"}]}'),
    ("/v1/collections/c/documents", r'{"documents": [{"id": "b\ud800", "text": "x"}]}'),
    ("/", r'{"inputs": "x\ud800"}'),
]


@pytest.mark.parametrize(("path", "body"), SURROGATES)
def test_a_lone_surrogate_is_422_not_500(cclient: TestClient, path: str, body: str) -> None:
    message = _problem(cclient.post(path, content=body.encode(), headers=JSON), 422, "validation")
    assert "surrogate" in message or "unicode" in message.lower(), message
    assert cclient.get("/v1/collections/c").json()["count"] == 6


def test_invalid_utf8_and_deep_nesting_are_422(cclient: TestClient) -> None:
    for body in (b'{"inputs": "\xff\xfe"}', b"[" * 2000 + b"]" * 2000, b'{"inputs": "x"'):
        _problem(cclient.post("/embed", content=body, headers=JSON), 422, "validation")


def test_filters_are_bounded_and_validated(cclient: TestClient) -> None:
    def search(filt: dict[str, Any]) -> Any:
        return cclient.post("/v1/collections/c/search", json={"query": "dog", "filter": filt})

    assert search({"n": 3}).status_code == 200
    assert "4 keys" in _problem(search({f"k{i}": i for i in range(1000)}), 422, "validation")
    assert "4 keys" in _problem(search({f"k{i}": i for i in range(5)}), 422, "validation")
    _problem(search({"k" * 17: 1}), 422, "validation")
    _problem(search({"n": "v" * 33}), 422, "validation")
    for big in (2**63, 2**70):  # beyond int64: compared as a float, never a 500
        assert search({"n": big}).json()["results"] == []
    _problem(search({"n": [1, 2]}), 422, "validation")


# Finding 2: an admin request cannot brick a collection.
@pytest.mark.parametrize(
    "index",
    [
        {"kind": "hnsw", "params": {"ef_search": 1099511627776}},
        {"kind": "hnsw", "params": {"ef_search": 4097}},  # over the setting
        {"kind": "hnsw", "params": {"m": 2**20}},
        {"kind": "hnsw", "params": {"m": 1}},
        {"kind": "hnsw", "params": {"ef_construction": 10**9}},
        {"kind": "ivf", "params": {"nlist": 10**9}},
        {"kind": "ivf", "params": {"nprobe": 10**9}},
        {"kind": "ivf", "params": {"nprobe": 0}},
        {"kind": "hnsw", "params": {"nlist": 4}},  # another kind's parameter
        {"params": {"m": 16}},  # parameters without their kind
    ],
)
def test_index_parameters_out_of_range_are_refused(
    cclient: TestClient, index: dict[str, Any]
) -> None:
    before = cclient.get("/v1/collections/c").json()
    _problem(cclient.put("/v1/collections/c", json={"index": index}), 422, "validation")
    assert cclient.get("/v1/collections/c").json()["index"] == before["index"]
    resp = cclient.post("/v1/collections/c/search", json={"query": "dog", "k": 3})
    assert resp.status_code == 200 and len(resp.json()["results"]) == 3
    docs = {"documents": [{"id": "new", "text": "a new dog"}]}
    assert cclient.post("/v1/collections/c/documents", json=docs).json()["count"] == 7


def test_index_parameters_within_range_are_accepted(cclient: TestClient) -> None:
    index = {"kind": "hnsw", "params": {"m": 16, "ef_construction": 64, "ef_search": 4096}}
    resp = cclient.put("/v1/collections/c", json={"index": index})
    assert resp.status_code == 200, resp.text
    assert resp.json()["index"]["params"] == index["params"]
    assert cclient.post("/v1/collections/c/search", json={"query": "dog"}).status_code == 200


# Finding 6: strict types where the schema says boolean or integer.
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/embed", {"inputs": "x", "truncate": 0}),
        ("/embed", {"inputs": "x", "whiten": 0}),
        ("/embed", {"inputs": "x", "normalize": "true"}),
        ("/embed", {"inputs": "x", "dimensions": 4.5}),
        ("/v1/similarity", {"pairs": [{"a": "x", "b": "y"}], "truncate": 1}),
        ("/similarity", {"inputs": {"source_sentence": "x", "sentences": ["y"]}, "truncate": 0}),
        ("/v1/embeddings", {"input": "x", "dimensions": True}),
        ("/v1/embeddings", {"input": "x", "dimensions": "4"}),
        ("/v1/collections/c/search", {"query": "dog", "k": "5"}),
        ("/v1/collections/c/search", {"query": "dog", "k": True}),
        ("/v1/collections/c/search", {"query": "dog", "k": 2.5}),
    ],
)
def test_booleans_and_integers_are_not_coerced(
    cclient: TestClient, path: str, body: dict[str, Any]
) -> None:
    _problem(cclient.post(path, json=body), 422, "validation")


def test_integers_are_json_schema_integers(cclient: TestClient) -> None:
    """`2.0` is an integer in JSON Schema; `"2"`, `true` and `2.5` are not."""
    resp = cclient.post("/v1/collections/c/search", json={"query": "dog", "k": 2.0})
    assert resp.status_code == 200 and len(resp.json()["results"]) == 2
    assert len(cclient.post("/embed", json={"inputs": "x", "dimensions": 4.0}).json()[0]) == 4


def test_index_parameters_are_strict_integers(cclient: TestClient) -> None:
    for value in ("16", True, 16.5):
        index = {"kind": "hnsw", "params": {"m": value}}
        _problem(cclient.put("/v1/collections/c", json={"index": index}), 422, "validation")


def test_a_405_lists_every_allowed_method(cclient: TestClient) -> None:
    resp = cclient.post("/v1/collections/c")
    _problem(resp, 405, "method_not_allowed")
    assert {m.strip() for m in resp.headers["allow"].split(",")} == {"GET", "PUT", "DELETE"}
    resp = cclient.post("/v1/collections/c/documents/d1")
    assert {m.strip() for m in resp.headers["allow"].split(",")} == {"GET", "DELETE"}
    assert cclient.get("/v1/similarity").headers["allow"] == "POST"


# OpenAI's error shape on the /v1 routes, the TEI shape elsewhere; `error_type` on both.
def test_v1_errors_are_in_openai_shape(cclient: TestClient) -> None:
    resp = cclient.post("/v1/embeddings", json={"input": "x", "dimensions": 0})
    assert resp.status_code == 422
    body = resp.json()
    assert body["error_type"] == "validation"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "validation" and body["error"]["param"] == "dimensions"
    assert "dimensions" in body["error"]["message"]
    missing = cclient.get("/v1/collections/nope").json()
    assert missing["error"]["type"] == "not_found" and missing["error_type"] == "not_found"
    tei = cclient.post("/embed", json={"inputs": []}).json()
    assert set(tei) == {"error", "error_type"} and isinstance(tei["error"], str)


def test_a_server_error_keeps_the_connection_and_logs_once(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    core = FakeEncoder()
    app = create_app(settings, engine_factory=fake_factory(core))
    with live_server(app) as url:
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        core.fail = RuntimeError("the session broke")
        caplog.clear()
        with caplog.at_level(logging.INFO):
            conn.request("POST", "/embed", body=b'{"inputs": "x"}', headers=JSON)
            first = conn.getresponse()
            first.read()
            assert first.status == 500
            assert not first.will_close, first.getheaders()
            sock = conn.sock
            core.fail = None
            conn.request("POST", "/embed", body=b'{"inputs": "x"}', headers=JSON)
            second = conn.getresponse()
            second.read()
        assert second.status == 200 and conn.sock is sock, "the connection was dropped"
        conn.close()
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, [r.getMessage() for r in tracebacks]


# Finding 6: documentation that works offline and says what the service does.
def test_docs_pages_reference_only_the_services_own_assets(cclient: TestClient) -> None:
    import re

    for page in ("/docs", "/redoc"):
        resp = cclient.get(page)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
        refs = re.findall(r"""(?:src|href|url)\s*[=:(]\s*['"]?([^'"\s)>]+)""", resp.text)
        assert refs, resp.text
        assert "://" not in resp.text and "//" not in "".join(refs), refs
        for ref in refs:
            assert ref.startswith("/"), (page, ref)
            assert cclient.get(ref).status_code == 200, (page, ref)


def test_openapi_documents_every_status_and_limit(cclient: TestClient) -> None:
    doc = cclient.get("/openapi.json").json()
    assert "x-simsvc-limit" not in str(doc)
    paths = doc["paths"]
    expected = {
        ("/v1/embeddings", "post"): {"200", "413", "415", "422", "429", "503"},
        ("/embed", "post"): {"200", "413", "415", "422", "429", "503"},
        ("/v1/similarity", "post"): {"200", "413", "422", "429", "503"},
        ("/", "post"): {"200", "413", "422", "429", "503"},
        ("/invocations", "post"): {"200", "413", "422", "429", "503"},
        ("/v1/models", "get"): {"200", "503"},
        ("/v1/collections/{name}", "put"): {"200", "201", "409", "413", "415", "422", "503"},
        ("/v1/collections/{name}", "get"): {"200", "404", "422", "503"},
        ("/v1/collections/{name}/search", "post"): {"200", "404", "409", "422", "429", "503"},
        ("/v1/collections/{name}/documents", "post"): {"200", "409", "413", "415", "422", "429"},
        ("/ready", "get"): {"200", "503"},
    }
    for (path, method), statuses in expected.items():
        assert statuses <= set(paths[path][method]["responses"]), (path, method)
    retry = paths["/embed"]["post"]["responses"]["429"]["headers"]
    assert "Retry-After" in retry
    v1_error = paths["/v1/embeddings"]["post"]["responses"]["422"]["content"]
    assert v1_error["application/json"]["schema"]["$ref"].endswith("/OpenAIErrorResponse")
    schemas = doc["components"]["schemas"]
    settings = cclient.app.state.simsvc.settings  # type: ignore[attr-defined]
    search = schemas["SearchRequest"]["properties"]
    assert search["k"]["maximum"] == settings.max_search_k and search["k"]["minimum"] == 1
    assert search["filter"]["maxProperties"] == 4
    assert schemas["SimilarityRequest"]["properties"]["pairs"]["maxItems"] == 4
    assert schemas["SimilarityRequest"]["properties"]["pairs"]["minItems"] == 1
    assert schemas["Pair"]["properties"]["a"]["maxLength"] == settings.max_chars_per_text
    texts = schemas["EmbedRequest"]["properties"]["inputs"]["anyOf"][1]
    assert texts["maxItems"] == settings.max_texts_per_request and texts["minItems"] == 1
    assert texts["items"]["maxLength"] == settings.max_chars_per_text
    ids = schemas["OpenAIEmbeddingRequest"]["properties"]["input"]["anyOf"][2]
    assert ids["maxItems"] == settings.max_chars_per_text
    assert ids["items"] == {"type": "integer", "minimum": 0, "maximum": 30_999}
    assert schemas["EmbedRequest"]["allOf"], "whiten/pooling/dimensions rules"
    dims = schemas["OpenAIEmbeddingRequest"]["properties"]["dimensions"]["anyOf"][0]
    assert dims["maximum"] == 16  # the fake engine's dims
    name = next(
        p for p in paths["/v1/collections/{name}"]["get"]["parameters"] if p["name"] == "name"
    )
    assert name["schema"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
    hnsw = schemas["HnswParams"]["properties"]
    assert hnsw["ef_search"]["anyOf"][0]["maximum"] == 4096  # the setting
    assert hnsw["m"]["anyOf"][0]["maximum"] == settings.hnsw_max_m


def test_collection_name_pattern_matches_the_runtime() -> None:
    from service.api.collection_schemas import NAME_PATTERN
    from service.runtime.store import base

    assert NAME_PATTERN == base.NAME_PATTERN
