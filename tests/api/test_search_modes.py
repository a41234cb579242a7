"""Search modes over HTTP on the fake encoder, on both stores: lexical (BM25), hybrid
(fused), explain, filters, analysers, search defaults, reranking's contract."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.settings import Settings
from tests.api.conftest import fake_factory

Client = Callable[..., TestClient]

DOCS = [
    ("cats", "The cat sleeps on the warm window sill", {"kind": "pet"}),
    ("dogs", "A dog runs after the red ball in the park", {"kind": "pet"}),
    ("runner", "She is running a marathon through the old city", {"kind": "sport"}),
    ("piano", "He plays the piano every evening after dinner", {"kind": "music"}),
    ("guitar", "A man plays a guitar and sings an old song", {"kind": "music"}),
    ("stocks", "The stock market fell sharply on Monday morning", {"kind": "news"}),
    ("rain", "Heavy rain is expected over the city tomorrow", {"kind": "news"}),
    ("bird", "A small bird sings in the green tree", {"kind": "pet"}),
]


@pytest.fixture(params=["local", "postgres"])
def store_settings(request: pytest.FixtureRequest, settings: Settings, tmp_path: Path) -> Settings:
    base = settings.model_copy(update={"data_dir": tmp_path / "data", "max_search_k": 50})
    if request.param == "local":
        return base
    url = request.getfixturevalue("postgres_url")
    return base.model_copy(update={"store": SecretStr(url)})


@pytest.fixture
def client(make_client: Client, store_settings: Settings) -> TestClient:
    c = make_client(store_settings, engine_factory=fake_factory())
    docs = [{"id": i, "text": t, "metadata": m} for i, t, m in DOCS]
    assert c.post("/v1/collections/c/documents", json={"documents": docs}).status_code == 200
    return c


def _search(client: TestClient, **body: Any) -> dict[str, Any]:
    resp = client.post("/v1/collections/c/search", json=body)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _ids(answer: dict[str, Any]) -> list[str]:
    return [h["id"] for h in answer["results"]]


def test_lexical_search_ranks_by_bm25_with_stemming_and_filters(client: TestClient) -> None:
    found = _search(client, query="runs", mode="lexical", k=5)
    assert found["mode"] == "lexical"
    # Snowball: "runs" and "running" share the stem "run"; nothing else says it.
    assert set(_ids(found)) == {"dogs", "runner"}
    scores = [h["score"] for h in found["results"]]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0
    # More matching terms rank higher.
    assert _ids(_search(client, query="plays a guitar song", mode="lexical"))[0] == "guitar"
    # Stop words alone match nothing; an unknown word neither.
    assert _search(client, query="the and of", mode="lexical")["results"] == []
    assert _search(client, query="xylophone", mode="lexical")["results"] == []
    # Filters apply, and k results come back when enough documents match.
    music = _search(client, query="plays sings", mode="lexical", k=2, filter={"kind": "music"})
    assert _ids(music) == ["guitar", "piano"] or _ids(music) == ["piano", "guitar"]
    pets = _search(client, query="sings", mode="lexical", filter={"kind": "pet"})
    assert _ids(pets) == ["bird"]


def test_hybrid_fuses_both_lists_and_explains(client: TestClient) -> None:
    rrf = {"method": "rrf", "rrf_k": 60, "alpha": 0.5}
    answer = _search(client, query="a dog runs after the ball", k=8, explain=True, fusion=rrf)
    assert answer["mode"] == "hybrid"  # the service's default
    top = answer["results"][0]
    assert top["id"] == "dogs"
    assert top["sources"]["dense"]["rank"] == 1 and top["sources"]["lexical"]["rank"] == 1
    # A document only the lexical list found is fused in too, and says so.
    runner = next(h for h in answer["results"] if h["id"] == "runner")
    assert "lexical" in runner["sources"]
    for hit in answer["results"]:
        assert set(hit["sources"]) <= {"dense", "lexical"}
    # RRF: each list contributes 1 / (60 + rank).
    expected = sum(1 / (60 + s["rank"]) for s in top["sources"].values())
    assert top["score"] == pytest.approx(expected)
    plain = _search(client, query="a dog runs after the ball", k=8)
    assert "sources" not in plain["results"][0]
    weighted = _search(
        client,
        query="a dog runs after the ball",
        k=8,
        fusion={"method": "weighted", "alpha": 0.0},
        explain=True,
    )
    # alpha 0: the lexical list alone decides (normalised to 1 at its best).
    assert weighted["results"][0]["id"] == "dogs" and weighted["results"][0]["score"] == 1.0
    # cosine normalisation: alpha 1 scores each hit by its dense cosine as it is.
    cosine = _search(
        client,
        query="a dog runs after the ball",
        k=8,
        fusion={"method": "weighted", "normalization": "cosine", "alpha": 1.0},
        explain=True,
    )
    for hit in cosine["results"]:
        dense = hit["sources"].get("dense", {"score": 0.0})["score"]
        assert hit["score"] == pytest.approx(dense)
    bad = client.post(
        "/v1/collections/c/search",
        json={"query": "dog", "fusion": {"normalization": "zscore"}},
    )
    assert bad.status_code == 422 and "normalization" in bad.text
    filtered = _search(client, query="plays sings", k=3, filter={"kind": "music"})
    assert sorted(_ids(filtered)) == ["guitar", "piano"]


def test_search_defaults_are_per_collection_and_reported(client: TestClient) -> None:
    info = client.get("/v1/collections/c").json()
    assert info["search"]["mode"] == "hybrid" and info["search"]["overrides"] == {}
    assert info["search"]["fusion"] == {
        "method": "weighted",
        "rrf_k": 60,
        "alpha": 0.4,
        "candidates": 100,
        "normalization": "minmax",
    }
    assert info["lexical"]["analyzer"] == "english" and info["lexical"]["terms"] > 0
    put = client.put(
        "/v1/collections/c",
        json={"search": {"mode": "lexical", "fusion": {"method": "rrf", "rrf_k": 10}}},
    )
    assert put.status_code == 200, put.text
    assert put.json()["search"]["mode"] == "lexical"
    assert put.json()["search"]["fusion"]["rrf_k"] == 10
    assert put.json()["search"]["fusion"]["method"] == "rrf"
    assert _search(client, query="runs")["mode"] == "lexical"
    assert _search(client, query="runs", mode="dense")["mode"] == "dense"


def test_changing_the_analyzer_reanalyses_the_stored_texts(client: TestClient) -> None:
    assert "runner" in _ids(_search(client, query="runs", mode="lexical"))
    terms = client.get("/v1/collections/c").json()["lexical"]["terms"]
    put = client.put("/v1/collections/c", json={"lexical": {"analyzer": "simple"}})
    assert put.status_code == 200, put.text
    info = put.json()["lexical"]
    assert info["analyzer"] == "simple" and info["terms"] > terms  # stop words kept now
    # No stemming any more: "runs" is only the dog's.
    assert _ids(_search(client, query="runs", mode="lexical")) == ["dogs"]
    # Nor stop words: "the" finds what it says.
    assert "cats" in _ids(_search(client, query="the", mode="lexical", k=10))


def test_bad_search_requests_are_refused(client: TestClient) -> None:
    def error(body: dict[str, Any], status: int, error_type: str) -> None:
        resp = client.post("/v1/collections/c/search", json={"query": "x", **body})
        assert resp.status_code == status, resp.text
        assert resp.json()["error_type"] == error_type

    error({"mode": "fuzzy"}, 422, "validation")
    error({"fusion": {"alpha": 1.5}}, 422, "validation")
    error({"fusion": {"method": "max"}}, 422, "validation")
    error({"fusion": {"candidates": 5000}}, 422, "validation")
    error({"fusion": {"bogus": 1}}, 422, "validation")
    error({"rerank": {"candidates": 0}}, 422, "validation")
    error({"rerank": {"candidates": 500}}, 422, "validation")
    # The fake engine has no cross-encoder: reranking says so.
    resp = client.post("/v1/collections/c/search", json={"query": "x", "rerank": {"candidates": 5}})
    assert resp.status_code == 424 and resp.json()["error_type"] == "no_cross_encoder"
    bad = client.put("/v1/collections/c", json={"lexical": {"analyzer": "klingon"}})
    assert bad.status_code == 422


def test_both_stores_rank_lexical_search_alike(
    make_client: Client, settings: Settings, tmp_path: Path, postgres_url: str
) -> None:
    """The local store ranks with FTS5's bm25(), PostgreSQL with the same formula in SQL."""
    from tests.builders import sentences

    texts = list(dict.fromkeys(sentences(300, seed=5)))[:150]
    docs = [{"id": f"s{i}", "text": t, "metadata": {"odd": i % 2}} for i, t in enumerate(texts)]
    answers = []
    for store in (None, SecretStr(postgres_url)):
        s = settings.model_copy(
            update={"data_dir": tmp_path / str(store is None), "store": store, "max_search_k": 50}
        )
        c = make_client(s, engine_factory=fake_factory())
        for start in range(0, 150, 10):  # the test settings bound the body to 4 kB
            body = {"documents": docs[start : start + 10]}
            assert c.post("/v1/collections/c/documents", json=body).status_code == 200
        c.delete("/v1/collections/c/documents/s3")  # deletions count in the statistics too
        c.post("/v1/collections/c/documents", json={"documents": [{**docs[5], "text": "the dog"}]})
        answers.append(
            [
                _search(c, query=q, mode="lexical", k=10, filter=f)["results"]
                for q in ("the old man plays", "a red car", "children eat quickly", texts[40])
                for f in ({}, {"odd": 1})
            ]
        )
    for local, pg in zip(*answers, strict=True):
        assert [h["score"] for h in local] == pytest.approx([h["score"] for h in pg], rel=1e-6)
        # Same documents, in the same order up to exact ties (a tie at the k-th place may
        # keep either document).
        by_score: dict[float, set[str]] = {}
        for h in local:
            by_score.setdefault(round(h["score"], 6), set()).add(h["id"])
        last = round(local[-1]["score"], 6) if local else None
        for h in pg:
            if round(h["score"], 6) != last:
                assert h["id"] in by_score[round(h["score"], 6)]


def test_rerank_rescores_the_top_results_with_the_cross_encoder(
    make_client: Client, store_settings: Settings
) -> None:
    from tests.fakes import FakeCrossEncoder

    c = make_client(store_settings, engine_factory=fake_factory(cross=FakeCrossEncoder()))
    docs = [{"id": i, "text": t, "metadata": m} for i, t, m in DOCS]
    assert c.post("/v1/collections/c/documents", json={"documents": docs}).status_code == 200
    query = "a man plays a guitar and sings an old song"
    plain = _search(c, query=query, k=6, explain=True)
    ranked = _search(c, query=query, k=6, explain=True, rerank={"candidates": 4})
    top4 = {h["id"] for h in plain["results"][:4]}
    assert {h["id"] for h in ranked["results"][:4]} == top4  # rescored, not widened
    assert [h["id"] for h in ranked["results"][4:]] == [h["id"] for h in plain["results"][4:]]
    scores = [h["sources"]["rerank"]["score"] for h in ranked["results"][:4]]
    assert scores == sorted(scores, reverse=True)
    assert [h["sources"]["rerank"]["rank"] for h in ranked["results"][:4]] == [1, 2, 3, 4]
    assert ranked["results"][0]["id"] == "guitar"  # the word-overlap cross-encoder's pick
    assert ranked["results"][0]["score"] == scores[0]
    assert "rerank" not in ranked["results"][4]["sources"]


def test_a_filter_holding_nul_matches_nothing(client: TestClient) -> None:
    """No store keeps NUL (documents with one are refused), so such a filter finds nothing;
    PostgreSQL could not even compare it."""
    for mode in ("dense", "lexical", "hybrid"):
        found = _search(client, query="a dog", mode=mode, filter={"kind\x00": "pet"})
        assert found == {"mode": mode, "results": []}
        assert _search(client, query="a dog", mode=mode, filter={"kind": "p\x00t"})["results"] == []
    doc = {"id": "nul", "text": "a \x00 dog", "metadata": {}}
    resp = client.post("/v1/collections/c/documents", json={"documents": [doc]})
    assert resp.status_code == 422 and "NUL" in resp.text
