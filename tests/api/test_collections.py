"""Collections over HTTP on the fake encoder: the contract, bad input, rebuilds, restarts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.runtime.store.local_collection import LocalCollection
from service.settings import Settings
from tests.api.conftest import DIMS, fake_factory
from tests.builders import sentences
from tests.fakes import FakeEncoder

Client = Callable[..., TestClient]


def _error(resp: Any, status: int, error_type: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error_type"] == error_type, body
    return str(body["error"])


def _docs(n: int, start: int = 0, seed: int = 7) -> list[dict[str, Any]]:
    texts = sentences(start + n, seed=seed)[start:]
    return [
        {"id": f"d{start + i}", "text": t, "metadata": {"group": (start + i) % 10, "n": start + i}}
        for i, t in enumerate(texts)
    ]


def _ndjson(docs: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(d) + b"\n" for d in docs)


def _post_ndjson(client: TestClient, name: str, body: Any) -> Any:
    return client.post(
        f"/v1/collections/{name}/documents",
        content=body,
        headers={"content-type": "application/x-ndjson"},
    )


def _index(client: TestClient, name: str, docs: list[dict[str, Any]]) -> dict[str, int]:
    resp = _post_ndjson(client, name, _ndjson(docs))
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


@pytest.fixture
def local_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "data_dir": tmp_path / "data",
            "index_batch_documents": 4,
            "max_documents_per_request": 20,
            "max_ndjson_line_bytes": 1024,
            "max_search_k": 50,
            "ivf_min_documents": 40,
        }
    )


@pytest.fixture(params=["local", "postgres"])
def coll_settings(request: pytest.FixtureRequest, local_settings: Settings) -> Settings:
    """The same settings on each store: the contract must not depend on it."""
    if request.param == "local":
        return local_settings
    url = request.getfixturevalue("postgres_url")
    return local_settings.model_copy(update={"store": SecretStr(url)})


@pytest.fixture
def cclient(make_client: Client, coll_settings: Settings) -> TestClient:
    return make_client(coll_settings, engine_factory=fake_factory())


def _search(client: TestClient, name: str, query: str, k: int = 5, **filt: Any) -> list[Any]:
    """Dense search: these tests are about the stores and their vector indexes."""
    resp = client.post(
        f"/v1/collections/{name}/search",
        json={"query": query, "k": k, "filter": filt, "mode": "dense"},
    )
    assert resp.status_code == 200, resp.text
    return list(resp.json()["results"])


def test_collection_lifecycle(cclient: TestClient) -> None:
    created = cclient.put("/v1/collections/books", json={"index": {"kind": "hnsw"}})
    assert created.status_code == 201, created.text
    info = created.json()
    assert info["name"] == "books" and info["count"] == 0 and info["dims"] == DIMS
    assert info["index"]["kind"] == "hnsw"
    assert info["index"]["params"] == {"m": 32, "ef_construction": 200, "ef_search": 512}
    assert info["whitening"]["version"] == 0 and info["whitening"]["source"] == "bundle"
    again = cclient.put(
        "/v1/collections/books", json={"index": {"kind": "hnsw", "params": {"ef_search": 99}}}
    )
    assert again.status_code == 200 and again.json()["index"]["params"]["ef_search"] == 99
    assert cclient.put("/v1/collections/books").status_code == 200  # no body: no change
    listed = cclient.get("/v1/collections").json()["collections"]
    assert [c["name"] for c in listed] == ["books"]
    assert cclient.get("/v1/collections/books").json()["index"]["kind"] == "hnsw"
    assert cclient.delete("/v1/collections/books").json() == {"deleted": "books"}
    _error(cclient.get("/v1/collections/books"), 404, "not_found")
    _error(cclient.delete("/v1/collections/books"), 404, "not_found")
    assert cclient.get("/v1/collections").json() == {"collections": []}


def test_documents_are_upserted_fetched_searched_and_deleted(cclient: TestClient) -> None:
    docs = _docs(12)
    resp = cclient.post("/v1/collections/c/documents", json={"documents": docs})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"indexed": 12, "count": 12}  # created on first write
    got = cclient.get("/v1/collections/c/documents/d3").json()
    assert got == {"id": "d3", "text": docs[3]["text"], "metadata": docs[3]["metadata"]}
    top = _search(cclient, "c", docs[5]["text"], k=3)
    assert top[0]["id"] == "d5" and top[0]["score"] > 0.99
    assert set(top[0]) == {"id", "score", "text", "metadata"}
    assert [r["score"] for r in top] == sorted((r["score"] for r in top), reverse=True)

    new: dict[str, Any] = {
        "id": "d5",
        "text": "the blue plane flies over the old house",
        "metadata": {"v": 2},
    }
    resp = cclient.post("/v1/collections/c/documents", json={"documents": [new]})
    assert resp.json() == {"indexed": 1, "count": 12}
    assert cclient.get("/v1/collections/c/documents/d5").json()["metadata"] == {"v": 2}
    hits = _search(cclient, "c", new["text"], k=12)
    assert hits[0]["id"] == "d5" and hits[0]["text"] == new["text"]
    assert len({h["id"] for h in hits}) == len(hits) == 12  # the old version is gone

    assert cclient.delete("/v1/collections/c/documents/d5").json() == {
        "deleted": "d5",
        "count": 11,
    }
    _error(cclient.get("/v1/collections/c/documents/d5"), 404, "not_found")
    _error(cclient.delete("/v1/collections/c/documents/d5"), 404, "not_found")
    assert "d5" not in {h["id"] for h in _search(cclient, "c", new["text"], k=12)}
    info = cclient.get("/v1/collections/c").json()
    assert info["count"] == 11 and info["index"]["vectors"] == 11


def test_ids_with_slashes_and_unicode_are_addressable(cclient: TestClient) -> None:
    doc = {"id": "a/b c/ü", "text": "the cat sleeps", "metadata": {}}
    cclient.post("/v1/collections/c/documents", json={"documents": [doc]})
    assert cclient.get("/v1/collections/c/documents/a/b c/ü").json()["id"] == "a/b c/ü"


def test_ndjson_stream_is_not_bound_by_the_body_limit(cclient: TestClient) -> None:
    docs = _docs(60)
    body = _ndjson(docs)
    assert len(body) > 4096  # the test settings' max_body_bytes

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 100):  # lines split across chunks
            yield body[start : start + 100]

    resp = _post_ndjson(cclient, "big", chunks())
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"indexed": 60, "count": 60}
    # The same documents as one JSON body are bounded.
    big = cclient.post("/v1/collections/other/documents", json={"documents": docs[:45]})
    _error(big, 413, "body_too_large")
    assert _search(cclient, "big", docs[59]["text"], k=1)[0]["id"] == "d59"


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_filtered_search_returns_k_when_enough_documents_match(
    cclient: TestClient, kind: str
) -> None:
    assert cclient.put("/v1/collections/f", json={"index": {"kind": kind}}).status_code == 201
    docs = _docs(50)
    for start in range(0, 50, 10):
        resp = cclient.post("/v1/collections/f/documents", json={"documents": docs[start:][:10]})
        assert resp.status_code == 200, resp.text
    # Updates leave hnsw tombstones behind; results must still hold each id once.
    cclient.post("/v1/collections/f/documents", json={"documents": docs[:5]})
    query = docs[0]["text"]
    group3 = _search(cclient, "f", query, k=4, group=3)
    assert len(group3) == 4 and all(h["metadata"]["group"] == 3 for h in group3)
    everything = _search(cclient, "f", query, k=10, group=3)
    assert sorted(h["id"] for h in everything) == sorted(f"d{i}" for i in range(3, 50, 10))
    assert _search(cclient, "f", query, k=5, group=3, n=13) == [
        h for h in everything if h["id"] == "d13"
    ]
    assert _search(cclient, "f", query, k=5, group="3") == []  # types must agree
    assert _search(cclient, "f", query, k=5, missing=None) == []
    unfiltered = _search(cclient, "f", query, k=50)
    assert len(unfiltered) == 50 and len({h["id"] for h in unfiltered}) == 50
    if kind == "ivf":
        info = cclient.get("/v1/collections/f").json()["index"]
        assert info["trained_on"] >= 40 and info["lists"] >= 1  # trained once 40 were in


def test_filter_value_types_are_matched_exactly(cclient: TestClient) -> None:
    docs = [
        {"id": "t", "text": "a cat", "metadata": {"x": True}},
        {"id": "one", "text": "a cat", "metadata": {"x": 1}},
        {"id": "onef", "text": "a cat", "metadata": {"x": 1.0}},
        {"id": "s", "text": "a cat", "metadata": {"x": "1"}},
        {"id": "null", "text": "a cat", "metadata": {"x": None}},
        {"id": "nested", "text": "a cat", "metadata": {"x": [1]}},
    ]
    cclient.post("/v1/collections/t/documents", json={"documents": docs})

    def ids(**where: Any) -> set[str]:
        return {h["id"] for h in _search(cclient, "t", "a cat", k=10, **where)}

    assert ids(x=True) == {"t"}
    assert ids(x=1) == {"one", "onef"}
    assert ids(x="1") == {"s"}
    assert ids(x=None) == {"null"}
    resp = cclient.post("/v1/collections/t/search", json={"query": "a cat", "filter": {"x": [1]}})
    _error(resp, 422, "validation")


def _state(client: TestClient) -> dict[str, Any]:
    colls = client.get("/v1/collections").json()["collections"]
    out: dict[str, Any] = {c["name"]: (c["count"], c["seq"]) for c in colls}
    if "c" in out:
        out["docs"] = [client.get(f"/v1/collections/c/documents/d{i}").json() for i in range(5)]
    return out


def test_bad_input_is_refused_and_changes_nothing(cclient: TestClient) -> None:
    docs = _docs(5)
    assert cclient.post("/v1/collections/c/documents", json={"documents": docs}).status_code == 200
    before = _state(cclient)

    def post(body: Any, name: str = "c") -> Any:
        return cclient.post(f"/v1/collections/{name}/documents", json=body)

    msg = _error(post({"documents": [{"id": "x", "metadata": {}}]}), 422, "validation")
    assert "documents.0.text" in msg
    _error(post({"documents": [{"id": "x", "text": ""}]}), 422, "validation")
    _error(post({"documents": [{"id": "", "text": "a"}]}), 422, "validation")
    _error(post({"documents": [{"id": "x" * 300, "text": "a"}]}), 422, "validation")
    _error(post({"documents": []}), 422, "validation")
    _error(post({"documents": [{"id": "x", "text": "a", "metadata": []}]}), 422, "validation")
    changed = [{**d, "text": "changed text"} for d in docs]
    dup = _error(post({"documents": [*changed[:3], changed[1]]}), 422, "validation")
    assert "'d1' appears twice" in dup
    # A duplicate across the request's encoder batches (4 documents each) is caught too.
    _error(post({"documents": [*changed, *_docs(3, start=10), changed[0]]}), 422, "validation")
    _error(post({"documents": _docs(21)}), 413, "too_many_texts")
    _error(post({"documents": [{"id": "x", "text": "w " * 150}]}), 413, "text_too_long")
    _error(post({"documents": [{"id": "x", "text": "w" * 4200}]}), 413, "body_too_large")
    bad_ndjson = _ndjson(changed) + b'{"id": "y"}\n' + _ndjson(_docs(2, start=20))
    assert "line 6" in _error(_post_ndjson(cclient, "c", bad_ndjson), 422, "validation")
    _error(_post_ndjson(cclient, "c", _ndjson(changed) + b"{oops\n"), 422, "validation")
    long_line = orjson.dumps({"id": "z", "text": "a " * 600}) + b"\n"
    _error(_post_ndjson(cclient, "c", _ndjson(changed) + long_line), 413, "body_too_large")
    wrong_type = cclient.post(
        "/v1/collections/c/documents", content=b"id,text", headers={"content-type": "text/csv"}
    )
    _error(wrong_type, 415, "unsupported_media_type")
    _error(cclient.put("/v1/collections/c", json={"dims": DIMS + 1}), 422, "validation")
    _error(cclient.put("/v1/collections/c", json={"index": {"kind": "lsh"}}), 422, "validation")
    bad_param = {"index": {"kind": "hnsw", "params": {"nprobe": 3}}}
    _error(cclient.put("/v1/collections/c", json=bad_param), 422, "validation")
    _error(
        cclient.put("/v1/collections/c", json={"index": {"params": {"m": 0}}}), 422, "validation"
    )
    _error(cclient.put("/v1/collections/bad.name", json={}), 422, "validation")
    search = cclient.post("/v1/collections/c/search", json={"query": "x", "k": 51})
    _error(search, 422, "validation")
    _error(cclient.post("/v1/collections/c/search", json={"query": ""}), 422, "validation")
    # Unknown collections on read.
    _error(cclient.get("/v1/collections/nope"), 404, "not_found")
    _error(cclient.get("/v1/collections/nope/documents/d1"), 404, "not_found")
    _error(cclient.post("/v1/collections/nope/search", json={"query": "x"}), 404, "not_found")
    _error(cclient.post("/v1/collections/nope/whitening:refit"), 404, "not_found")
    # A failed first write leaves no collection behind.
    _error(post({"documents": [*changed[:2], changed[0]]}, name="fresh"), 422, "validation")
    _error(_post_ndjson(cclient, "fresh2", _ndjson(changed) + b"{oops\n"), 422, "validation")
    assert _state(cclient) == before


def test_refit_fits_the_collection_and_swaps_atomically(cclient: TestClient) -> None:
    few = cclient.post("/v1/collections/c/documents", json={"documents": _docs(10)})
    assert few.status_code == 200
    msg = _error(cclient.post("/v1/collections/c/whitening:refit"), 409, "conflict")
    assert "needs more than 16" in msg
    docs = _docs(40, start=10)
    _index(cclient, "c", docs)
    info = cclient.post("/v1/collections/c/whitening:refit").json()
    assert info["whitening"] == {"version": 1, "source": "collection", "documents": 50, "dims": 16}
    assert info["count"] == 50 and info["index"]["vectors"] == 50
    assert _search(cclient, "c", docs[7]["text"], k=1)[0]["id"] == "d17"
    ident = cclient.post("/v1/collections/c/whitening:refit", json={"source": "identity"})
    assert ident.json()["whitening"]["version"] == 2
    assert ident.json()["whitening"]["source"] == "identity"
    assert _search(cclient, "c", docs[7]["text"], k=1)[0]["id"] == "d17"
    back = cclient.post("/v1/collections/c/whitening:refit", json={"source": "bundle"})
    assert back.json()["whitening"]["source"] == "bundle"
    assert cclient.get("/v1/collections/c").json()["whitening"]["version"] == 3


def test_searches_keep_working_during_a_rebuild(
    make_client: Client, local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Snapshots after every write: one lands mid-rebuild, and must keep the removal log the
    # new index needs to catch up with.
    settings = local_settings.model_copy(update={"index_snapshot_every": 1})
    cclient = make_client(settings, engine_factory=fake_factory())
    docs = _docs(30)
    _index(cclient, "c", docs)
    started, release = threading.Event(), threading.Event()
    build = LocalCollection.build

    def slow_build(self: LocalCollection, *args: Any) -> Any:
        view = build(self, *args)  # from the store as it is now; writes come after
        started.set()
        assert release.wait(10)
        return view

    monkeypatch.setattr(LocalCollection, "build", slow_build)
    answers: list[Any] = []
    refit = threading.Thread(
        target=lambda: answers.append(cclient.post("/v1/collections/c/whitening:refit"))
    )
    refit.start()
    assert started.wait(10)
    # Mid-rebuild: searches and writes go on against the current index.
    assert _search(cclient, "c", docs[4]["text"], k=1)[0]["id"] == "d4"
    changed: dict[str, Any] = {"id": "d4", "text": "a green train runs slowly", "metadata": {}}
    more = cclient.post(
        "/v1/collections/c/documents", json={"documents": [changed, *_docs(2, start=40)]}
    )
    assert more.json() == {"indexed": 3, "count": 32}
    assert cclient.get("/v1/collections/c").json()["whitening"]["version"] == 0
    release.set()
    refit.join(10)
    assert answers[0].status_code == 200, answers[0].text
    info = cclient.get("/v1/collections/c").json()
    # The write made during the rebuild was caught up into the new index, the old d4 removed.
    assert info["whitening"]["version"] == 1 and info["index"]["vectors"] == 32
    assert _search(cclient, "c", _docs(2, start=40)[1]["text"], k=1)[0]["id"] == "d41"
    assert _search(cclient, "c", changed["text"], k=1)[0]["text"] == changed["text"]


def test_changing_the_index_kind_rebuilds_without_re_encoding(
    make_client: Client, coll_settings: Settings
) -> None:
    core = FakeEncoder(dims=DIMS)
    client = make_client(coll_settings, engine_factory=fake_factory(core))
    docs = _docs(45)
    _index(client, "c", docs)
    encoded = len(core.batches)
    for kind, params in (("hnsw", {"m": 8}), ("ivf", {"nprobe": 2}), ("flat", {})):
        resp = client.put("/v1/collections/c", json={"index": {"kind": kind, "params": params}})
        assert resp.status_code == 200, resp.text
        index = resp.json()["index"]
        assert index["kind"] == kind and index["vectors"] == 45
        assert all(index["params"][p] == v for p, v in params.items())
        assert _search(client, "c", docs[20]["text"], k=1)[0]["id"] == "d20"
    assert len(core.batches) == encoded + 3  # three query encodings, no document re-encoded


def test_collections_survive_a_restart(
    make_client: Client, coll_settings: Settings, tmp_path: Path
) -> None:
    docs = _docs(20)
    first = make_client(coll_settings, engine_factory=fake_factory())
    first.put("/v1/collections/h", json={"index": {"kind": "hnsw"}})
    _index(first, "h", docs)
    _index(first, "c", docs)
    first.delete("/v1/collections/c/documents/d1")
    first.__exit__(None, None, None)  # a clean stop writes the snapshots

    second = make_client(coll_settings, engine_factory=fake_factory())
    for name, count in (("h", 20), ("c", 19)):
        info = second.get(f"/v1/collections/{name}").json()
        assert info["count"] == count and info["index"]["vectors"] == count
        assert _search(second, name, docs[9]["text"], k=1)[0]["id"] == "d9"
    assert second.get("/v1/collections/h").json()["index"]["kind"] == "hnsw"
    second.__exit__(None, None, None)

    if coll_settings.store is not None:
        return  # the rest is about the local store's files
    # Lost snapshots are rebuilt from the store, without the encoder.
    for snapshot in (tmp_path / "data" / "collections").glob("*/index-*.faiss"):
        snapshot.unlink()
    third = make_client(coll_settings, engine_factory=fake_factory())
    assert third.get("/v1/collections/c").json()["index"]["vectors"] == 19
    assert _search(third, "c", docs[9]["text"], k=1)[0]["id"] == "d9"


def test_collection_metrics(cclient: TestClient) -> None:
    docs = _docs(20)
    _index(cclient, "m", docs)
    _search(cclient, "m", "the cat", k=2)
    cclient.put("/v1/collections/m", json={"index": {"kind": "hnsw"}})
    text = cclient.get("/metrics").text
    assert 'simsvc_index_documents{collection="m"} 20.0' in text
    assert 'simsvc_search_seconds_count{kind="flat"} 1.0' in text
    assert 'simsvc_search_request_seconds_count{mode="dense"} 1.0' in text
    assert 'simsvc_lexical_terms{collection="m"}' in text
    assert 'simsvc_index_rebuild_seconds_count{reason="reconfigure"} 1.0' in text
    cclient.post("/v1/collections/m/search", json={"query": "the cat", "mode": "lexical"})
    cclient.post("/v1/collections/m/search", json={"query": "the cat"})
    text = cclient.get("/metrics").text
    assert 'simsvc_search_seconds_count{kind="lexical"} 2.0' in text  # hybrid's lexical list too
    assert 'simsvc_search_request_seconds_count{mode="hybrid"} 1.0' in text
    cclient.delete("/v1/collections/m")
    assert 'collection="m"' not in cclient.get("/metrics").text


def test_ready_waits_for_the_collections(
    make_client: Client, local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.runtime.store.local import LocalStore

    gate = threading.Event()
    opener = LocalStore.open_all

    def slow_open(self: LocalStore) -> None:
        assert gate.wait(10)
        opener(self)

    monkeypatch.setattr(LocalStore, "open_all", slow_open)
    client = make_client(local_settings, wait=False, engine_factory=fake_factory())
    deadline = time.monotonic() + 10
    while client.post("/embed", json={"inputs": "x"}).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert client.get("/ready").json() == {"status": "not_ready", "reason": "opening collections"}
    assert "simsvc_ready 0.0" in client.get("/metrics").text  # the gauge says what /ready says
    _error(client.get("/v1/collections"), 503, "not_ready")
    gate.set()
    from tests.conftest import wait_ready

    wait_ready(client)
    assert "simsvc_ready 1.0" in client.get("/metrics").text
    assert client.get("/v1/collections").status_code == 200


def test_collection_scopes(make_client: Client, coll_settings: Settings) -> None:
    from service.settings import ApiKey

    keys = [
        ApiKey(name="reader", key="r-key", scopes=["read"]),  # type: ignore[arg-type]
        ApiKey(name="writer", key="w-key", scopes=["read", "write"]),  # type: ignore[arg-type]
        ApiKey(name="root", key="a-key", scopes=["admin"]),  # type: ignore[arg-type]
    ]
    client = make_client(
        coll_settings.model_copy(update={"api_keys": keys}), engine_factory=fake_factory()
    )

    def as_(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    body = {"documents": _docs(3)}
    assert (
        client.post("/v1/collections/c/documents", json=body, headers=as_("r-key")).status_code
        == 403
    )
    assert (
        client.post("/v1/collections/c/documents", json=body, headers=as_("w-key")).status_code
        == 200
    )
    assert client.put("/v1/collections/c", headers=as_("w-key")).status_code == 403
    assert client.delete("/v1/collections/c", headers=as_("w-key")).status_code == 403
    refit = client.post("/v1/collections/c/whitening:refit", headers=as_("w-key"))
    assert refit.status_code == 403
    search = {"query": "the cat"}
    assert (
        client.post("/v1/collections/c/search", json=search, headers=as_("r-key")).status_code
        == 200
    )
    assert client.get("/v1/collections/c/documents/d1", headers=as_("r-key")).status_code == 200
    assert client.delete("/v1/collections/c/documents/d1", headers=as_("r-key")).status_code == 403
    assert client.delete("/v1/collections/c/documents/d1", headers=as_("w-key")).status_code == 200
    assert client.put("/v1/collections/c", headers=as_("a-key")).status_code == 200


def test_openapi_documents_both_bodies(cclient: TestClient) -> None:
    spec = cclient.get("/openapi.json").json()
    body = spec["paths"]["/v1/collections/{name}/documents"]["post"]["requestBody"]
    assert set(body["content"]) == {"application/json", "application/x-ndjson"}
    assert "$ref" not in str(body)  # inlined: no pointer into a missing $defs
    item = body["content"]["application/json"]["schema"]["properties"]["documents"]["items"]
    assert item["required"] == ["id", "text"]
    assert "/v1/collections/{name}/whitening:refit" in spec["paths"]


def test_a_failed_index_update_leaves_committed_documents_searchable(
    make_client: Client, local_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.runtime.index import VectorIndex

    settings = local_settings.model_copy(update={"index_repair_every_s": 0.0})
    client = make_client(settings, engine_factory=fake_factory())
    docs = _docs(12)
    _index(client, "c", docs[:6])
    add = VectorIndex.add

    def no_memory(self: VectorIndex, *args: Any) -> None:
        raise MemoryError("no room for the graph")

    monkeypatch.setattr(VectorIndex, "add", no_memory)
    # The write is durable before the index takes it: it stands, and stays searchable.
    assert _index(client, "c", docs[6:]) == {"indexed": 6, "count": 12}
    index = client.get("/v1/collections/c").json()["index"]
    assert index["state"] == "degraded" and "MemoryError" in index["problem"]
    for doc in (docs[2], docs[9]):
        assert _search(client, "c", doc["text"], k=1)[0]["id"] == doc["id"]
    assert len(_search(client, "c", docs[0]["text"], k=12, group=9)) == 1  # filters too
    # Once the index can be built again, the next write repairs it.
    monkeypatch.setattr(VectorIndex, "add", add)
    _index(client, "c", _docs(1, start=12))
    index = client.get("/v1/collections/c").json()["index"]
    assert "state" not in index and index["vectors"] == 13
    assert _search(client, "c", docs[9]["text"], k=1)[0]["id"] == "d9"


def test_a_collection_that_cannot_open_is_reported_and_can_be_dropped(
    make_client: Client, local_settings: Settings, tmp_path: Path
) -> None:
    first = make_client(local_settings, engine_factory=fake_factory())
    _index(first, "good", _docs(5))
    _index(first, "bad", _docs(5))
    first.__exit__(None, None, None)
    store = tmp_path / "data" / "collections" / "bad" / "store.sqlite3"
    store.write_bytes(b"this is not a database" * 100)

    second = make_client(local_settings, engine_factory=fake_factory())
    assert second.get("/ready").status_code == 200
    assert "simsvc_ready 1.0" in second.get("/metrics").text
    listed = {c["name"]: c for c in second.get("/v1/collections").json()["collections"]}
    assert listed["good"]["count"] == 5
    assert listed["bad"]["available"] is False and "cannot be opened" in listed["bad"]["problem"]
    _error(second.get("/v1/collections/bad"), 503, "collection_unavailable")
    search = second.post("/v1/collections/bad/search", json={"query": "x"})
    _error(search, 503, "collection_unavailable")
    assert _search(second, "good", "the cat", k=2)
    assert second.delete("/v1/collections/bad").json() == {"deleted": "bad"}
    assert [c["name"] for c in second.get("/v1/collections").json()["collections"]] == ["good"]
    assert _index(second, "bad", _docs(2)) == {"indexed": 2, "count": 2}  # a fresh one


def test_an_index_that_cannot_be_rebuilt_on_start_does_not_stop_the_service(
    make_client: Client, local_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.runtime.index import VectorIndex

    first = make_client(local_settings, engine_factory=fake_factory())
    first.put("/v1/collections/h", json={"index": {"kind": "hnsw"}})
    docs = _docs(10)
    _index(first, "h", docs)
    first.__exit__(None, None, None)
    for snapshot in (tmp_path / "data" / "collections").glob("*/index-*.faiss"):
        snapshot.unlink()

    def no_memory(*args: Any, **kwargs: Any) -> VectorIndex:
        raise MemoryError("cannot allocate the graph")

    monkeypatch.setattr(VectorIndex, "create", no_memory)
    second = make_client(local_settings, engine_factory=fake_factory())
    assert second.get("/ready").status_code == 200
    info = second.get("/v1/collections/h").json()
    assert info["count"] == 10 and info["index"]["state"] == "degraded"
    assert _search(second, "h", docs[3]["text"], k=1)[0]["id"] == "d3"
    assert second.delete("/v1/collections/h").status_code == 200


@pytest.mark.parametrize("kind", ["hnsw_sq8", "ivf_sq8", "ivf_pq"])
def test_compressed_kinds_are_the_local_stores(
    cclient: TestClient, coll_settings: Settings, kind: str
) -> None:
    """The FAISS-compressed kinds are selectable per collection on the local store; the
    PostgreSQL store refuses them by name (pgvector has no such index)."""
    resp = cclient.put("/v1/collections/z", json={"index": {"kind": kind}})
    if coll_settings.store is not None:
        assert "local store" in _error(resp, 422, "validation")
        return
    assert resp.status_code == 201, resp.text
    docs = _docs(45)
    _index(cclient, "z", docs)
    info = cclient.get("/v1/collections/z").json()["index"]
    assert info["kind"] == kind and info["vectors"] == 45
    assert _search(cclient, "z", docs[20]["text"], k=1)[0]["id"] == "d20"
    bad = cclient.put("/v1/collections/z", json={"index": {"kind": kind, "params": {"pq_m": 0}}})
    assert bad.status_code == 422
