"""Prompts on every route that takes text, on the fake encoder: the exact texts that reach
the encoder (and the cross-encoder), prompt_name's choice, and an unknown name's 422."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from service.runtime.prompts import Prompts
from service.settings import Settings
from tests.api.conftest import fake_factory
from tests.fakes import FakeCrossEncoder, FakeEncoder

Client = Callable[..., TestClient]

PROMPTS = Prompts(
    {"query": "query: ", "passage": "passage: ", "zebra": "zebra "},
    default_name="zebra",
    query_name="query",
    document_name="passage",
)
"""E5's pair, and a default apart from both (so each use's choice shows) whose word is in one
document: a lexical leg that saw a prompt would find that document."""

DOCS = [
    ("cats", "The cat sleeps on the warm window sill"),
    ("dogs", "A dog runs after the red ball in the park"),
    ("zoo", "A zebra grazes in the zoo"),
]


class Served:
    """A client on the fake engine with PROMPTS, and what its encoders read."""

    def __init__(self, client: TestClient, core: FakeEncoder, cross: FakeCrossEncoder) -> None:
        self.client = client
        self.core = core
        self.cross = cross

    def read(self, method: str, path: str, **kwargs: Any) -> list[str]:
        """The texts the encoder tokenized for one request (which must succeed)."""
        self.core.texts.clear()
        resp = self.client.request(method, path, **kwargs)
        assert resp.status_code == 200, resp.text
        return list(self.core.texts)


@pytest.fixture
def served(make_client: Client, settings: Settings, tmp_path: Path) -> Iterator[Served]:
    core, cross = FakeEncoder(dims=16), FakeCrossEncoder()
    local = settings.model_copy(update={"data_dir": tmp_path / "data", "max_search_k": 50})
    client = make_client(local, engine_factory=fake_factory(core, cross, PROMPTS))
    yield Served(client, core, cross)


def test_embedding_routes_take_the_default_prompt_or_the_named_one(served: Served) -> None:
    body = {"inputs": ["a cat", "a dog"]}
    for path in ("/embed", "/", "/invocations"):
        assert served.read("POST", path, json=body) == ["zebra a cat", "zebra a dog"]
        named = served.read("POST", path, json={**body, "prompt_name": "passage"})
        assert named == ["passage: a cat", "passage: a dog"]
    # InferenceClient sends it in `parameters`, as TEI reads it.
    tei = {"inputs": "a cat", "parameters": {"prompt_name": "query"}}
    assert served.read("POST", "/", json=tei) == ["query: a cat"]
    openai = {"input": ["a cat"], "prompt_name": "passage"}
    assert served.read("POST", "/v1/embeddings", json=openai) == ["passage: a cat"]
    assert served.read("POST", "/v1/embeddings", json={"input": "a cat"}) == ["zebra a cat"]


def test_a_prompt_changes_the_vector(served: Served) -> None:
    def vector(name: str) -> list[float]:
        resp = served.client.post("/embed", json={"inputs": "a cat", "prompt_name": name})
        return list(resp.json()[0])

    assert vector("query") != vector("passage")


def test_an_unknown_prompt_name_is_a_422_naming_the_field_and_the_prompts(
    served: Served,
) -> None:
    served.core.texts.clear()
    for path in ("/embed", "/"):
        resp = served.client.post(path, json={"inputs": "a cat", "prompt_name": "nope"})
        assert resp.status_code == 422, resp.text
        body = resp.json()
        assert body["error_type"] == "validation"
        assert "prompt_name" in body["error"] and "passage, query, zebra" in body["error"]
    tei = {"inputs": "a cat", "parameters": {"prompt_name": "nope"}}
    assert "prompt_name" in served.client.post("/", json=tei).json()["error"]
    openai = served.client.post("/v1/embeddings", json={"input": "a cat", "prompt_name": "nope"})
    assert openai.status_code == 422
    assert openai.json()["error"]["param"] == "prompt_name"
    assert "passage, query, zebra" in openai.json()["error"]["message"]
    assert served.core.texts == []  # refused before anything was encoded


def test_the_openapi_document_names_the_prompts_the_server_takes(
    served: Served, make_client: Client, settings: Settings
) -> None:
    """A schema-valid prompt_name is one the server accepts: fuzzers and generated clients
    read the bundle's names from the document (none when the bundle has no prompts)."""

    def prompt_fields(document: Any) -> list[Any]:
        found: list[Any] = []

        def visit(node: Any) -> None:
            if isinstance(node, dict):
                field = (node.get("properties") or {}).get("prompt_name")
                if isinstance(field, dict):
                    found.append(field)
                for value in node.values():
                    visit(value)
            elif isinstance(node, list):
                for value in node:
                    visit(value)

        visit(document)
        return found

    fields = prompt_fields(served.client.get("/openapi.json").json())
    assert len(fields) >= 3  # /embed's body, /v1/embeddings' body, TEI's parameters
    for field in fields:
        assert {"type": "string", "enum": ["passage", "query", "zebra"]} in field["anyOf"]
    bare = make_client(settings, engine_factory=fake_factory(FakeEncoder(dims=16)))
    for field in prompt_fields(bare.get("/openapi.json").json()):
        assert not any(branch.get("type") == "string" for branch in field["anyOf"])


def test_token_ids_take_no_prompt(served: Served) -> None:
    ids = {"input": [[2000, 2001]], "token_ids": "model"}
    assert served.read("POST", "/v1/embeddings", json=ids) == []
    refused = served.client.post("/v1/embeddings", json={**ids, "prompt_name": "query"})
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "prompt_name"


def test_pairs_take_the_query_prompt_once_per_distinct_text(served: Served) -> None:
    pairs = {"pairs": [{"a": "a cat", "b": "a dog"}, {"a": "a dog", "b": "a cat"}]}
    assert served.read("POST", "/v1/similarity", json=pairs) == ["query: a cat", "query: a dog"]
    tei = {"inputs": {"source_sentence": "a cat", "sentences": ["a dog"]}}
    assert served.read("POST", "/similarity", json=tei) == ["query: a cat", "query: a dog"]
    assert served.read("POST", "/", json=tei) == ["query: a cat", "query: a dog"]


def test_the_cross_encoder_reads_raw_text(served: Served) -> None:
    served.cross.pairs.clear()
    cross = {"pairs": [{"a": "a cat", "b": "a dog"}], "mode": "cross"}
    assert served.read("POST", "/v1/similarity", json=cross) == []
    assert served.read("POST", "/rerank", json={"query": "a cat", "texts": ["a dog"]}) == []
    assert served.read("POST", "/predict", json={"inputs": ["a cat", "a dog"]}) == []
    assert set(served.cross.pairs) == {("a cat", "a dog")}


def _docs() -> list[dict[str, Any]]:
    return [{"id": i, "text": t} for i, t in DOCS]


def test_documents_take_the_document_prompt_in_json_and_ndjson(served: Served) -> None:
    stored = served.read("POST", "/v1/collections/c/documents", json={"documents": _docs()})
    assert stored == [f"passage: {t}" for _, t in DOCS]
    lines = b"".join(orjson.dumps(d) + b"\n" for d in _docs())
    ndjson = served.read(
        "POST",
        "/v1/collections/n/documents",
        content=lines,
        headers={"content-type": "application/x-ndjson"},
    )
    assert ndjson == [f"passage: {t}" for _, t in DOCS]
    # Stored as sent: the prompt is how the encoder reads a text, not part of it.
    got = served.client.get("/v1/collections/c/documents/zoo").json()
    assert got["text"] == "A zebra grazes in the zoo"


def test_search_queries_take_the_query_prompt_and_the_lexical_leg_raw_text(
    served: Served,
) -> None:
    served.read("POST", "/v1/collections/c/documents", json={"documents": _docs()})
    path = "/v1/collections/c/search"
    dense = {"query": "cat sleeps", "k": 3, "mode": "dense"}
    assert served.read("POST", path, json=dense) == ["query: cat sleeps"]
    lexical = {"query": "cat sleeps", "k": 3, "mode": "lexical"}
    assert served.read("POST", path, json=lexical) == []
    found = served.client.post(path, json=lexical).json()["results"]
    assert [h["id"] for h in found] == ["cats"]  # "zebra" was never a query term
    hybrid = {"query": "cat sleeps", "k": 3, "mode": "hybrid", "explain": True}
    assert served.read("POST", path, json=hybrid) == ["query: cat sleeps"]
    results = served.client.post(path, json=hybrid).json()["results"]
    assert {h["id"] for h in results if "lexical" in h["sources"]} == {"cats"}


def test_search_rerank_gives_the_cross_encoder_the_raw_query(served: Served) -> None:
    served.read("POST", "/v1/collections/c/documents", json={"documents": _docs()})
    served.cross.pairs.clear()
    body = {"query": "a cat sleeps", "k": 3, "mode": "dense", "rerank": {"candidates": 3}}
    served.read("POST", "/v1/collections/c/search", json=body)
    assert {a for a, _ in served.cross.pairs} == {"a cat sleeps"}
    assert {b for _, b in served.cross.pairs} == {t for _, t in DOCS}


def test_info_shows_the_prompts_and_each_use(served: Served) -> None:
    info = served.client.get("/info").json()
    assert info["prompts"] == {
        "prompts": dict(PROMPTS.prompts),
        "default": "zebra",
        "query": "query",
        "document": "passage",
    }


def test_the_token_limit_counts_the_prompt(make_client: Client, settings: Settings) -> None:
    # max_length 6: [CLS] + 4 words + [SEP] fits alone; the prompt's word makes it 7.
    text = "one two three four"
    plain = make_client(settings, engine_factory=fake_factory(FakeEncoder(dims=16, max_length=6)))
    assert plain.post("/embed", json={"inputs": text, "truncate": False}).status_code == 200
    core = FakeEncoder(dims=16, max_length=6)
    client = make_client(settings, engine_factory=fake_factory(core, prompts=PROMPTS))
    too_long = client.post("/embed", json={"inputs": text, "truncate": False})  # "zebra ..."
    assert too_long.status_code == 413, too_long.text
    short = client.post("/embed", json={"inputs": "one two three", "truncate": False})
    assert short.status_code == 200, short.text
    cut = client.post("/v1/embeddings", json={"input": text})
    assert cut.status_code == 200 and cut.json()["usage"]["prompt_tokens"] == 6
