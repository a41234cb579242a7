"""Imported vectors on both stores: documents that carry their raw vector are searched by it,
refused whole when one is bad, and refit and rebuilt from what was stored."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.runtime.imported import encode_base64
from service.settings import Settings
from tests.api.conftest import DIMS, fake_factory
from tests.builders import sentences
from tests.fakes import FakeEncoder

Client = Callable[..., TestClient]
TEXTS = list(dict.fromkeys(sentences(120, seed=3)))


def raw_of(texts: list[str]) -> np.ndarray:
    """What the engine's encoder yields for these texts before whitening (the fake's mean)."""
    core = FakeEncoder(dims=DIMS)
    return np.asarray(core.infer(core.tokenize(texts))["mean"], dtype=np.float32)


@pytest.fixture(params=["local", "postgres"])
def vclient(
    request: pytest.FixtureRequest, make_client: Client, settings: Settings, tmp_path: Path
) -> TestClient:
    local = settings.model_copy(
        update={
            "data_dir": tmp_path / "data",
            "index_batch_documents": 4,
            "max_documents_per_request": 20,
            "max_body_bytes": 1 << 20,
        }
    )
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        local = local.model_copy(update={"store": SecretStr(url)})
    return make_client(local, engine_factory=fake_factory())


def _post_ndjson(client: TestClient, name: str, docs: list[dict[str, Any]]) -> Any:
    return client.post(
        f"/v1/collections/{name}/documents",
        content=b"".join(orjson.dumps(d) + b"\n" for d in docs),
        headers={"content-type": "application/x-ndjson"},
    )


def _top(client: TestClient, name: str, query: str, mode: str = "dense") -> dict[str, Any]:
    resp = client.post(
        f"/v1/collections/{name}/search", json={"query": query, "k": 3, "mode": mode}
    )
    assert resp.status_code == 200, resp.text
    return dict(resp.json()["results"][0])


def _unrelated(i: int) -> str:
    """A text whose own encoding is far from the vector imported with it."""
    return f"imported paragraph number {i} quux{i}"


def test_float_and_base64_vectors_are_searched_by_their_vector(vclient: TestClient) -> None:
    plain = [{"id": f"p{i}", "text": t} for i, t in enumerate(TEXTS[:10])]
    queries = TEXTS[40:44]
    raw = raw_of(queries)
    imported = [
        {"id": "as-list", "text": _unrelated(0), "embedding": raw[0].tolist()},
        {"id": "as-base64", "text": _unrelated(1), "embedding": encode_base64(raw[1])},
    ]
    # One upload mixing documents with and without a vector.
    resp = _post_ndjson(vclient, "v", [*plain[:5], *imported, *plain[5:]])
    assert resp.json() == {"indexed": 12, "count": 12}, resp.text
    top = _top(vclient, "v", queries[0])
    assert top["id"] == "as-list" and top["score"] > 0.999 and top["text"] == _unrelated(0)
    assert _top(vclient, "v", queries[1])["id"] == "as-base64"
    assert _top(vclient, "v", TEXTS[7])["id"] == "p7"  # the encoded ones alike
    # The text of an imported document is stored and indexed lexically all the same.
    assert _top(vclient, "v", "quux1", mode="lexical")["id"] == "as-base64"
    got = vclient.get("/v1/collections/v/documents/as-list").json()
    assert got == {"id": "as-list", "text": _unrelated(0), "metadata": {}}

    # A JSON body takes them too; replacing a document replaces its vector.
    body = {"documents": [{"id": "as-list", "text": "now", "embedding": raw[2].tolist()}]}
    assert vclient.post("/v1/collections/v/documents", json=body).json()["count"] == 12
    assert _top(vclient, "v", queries[2])["id"] == "as-list"
    assert _top(vclient, "v", queries[0])["id"] != "as-list"


def _b64(values: list[float]) -> str:
    return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()


GOOD = raw_of(["a good vector"])[0].tolist()
BAD = {
    "wrong dims (list)": (GOOD[:-1], "has 15 dimensions; the collection's model yields 16"),
    "wrong dims (base64)": (_b64([*GOOD, 1.0]), "has 17 dimensions"),
    "NaN": (_b64([float("nan"), *GOOD[1:]]), "component 0 is nan"),
    "infinity": (_b64([*GOOD[:3], float("inf"), *GOOD[4:]]), "component 3 is inf"),
    "beyond float32": ([*GOOD[:-1], 1e39], "component 15 is inf"),
    "not base64": ("not*base64!", "not valid base64"),
    "ragged bytes": (base64.b64encode(b"12345").decode(), "not a whole number of float32s"),
}


@pytest.mark.parametrize("problem", list(BAD))
def test_a_bad_vector_refuses_the_whole_upload_naming_its_line(
    vclient: TestClient, problem: str
) -> None:
    value, says = BAD[problem]
    assert _post_ndjson(vclient, "b", [{"id": "old", "text": TEXTS[0]}]).status_code == 200
    docs = [
        {"id": "new0", "text": TEXTS[1], "embedding": GOOD},
        {"id": "new1", "text": TEXTS[2]},
        {"id": "bad", "text": TEXTS[3], "embedding": value},
        {"id": "new3", "text": TEXTS[4]},
    ]
    resp = _post_ndjson(vclient, "b", docs)
    assert resp.status_code == 422, resp.text
    message = resp.json()["error"]["message"]
    assert message.startswith("line 3 (document 'bad'): embedding") and says in message, message
    # Nothing of the upload is stored.
    assert vclient.get("/v1/collections/b").json()["count"] == 1
    assert vclient.get("/v1/collections/b/documents/new0").status_code == 404

    resp = vclient.post("/v1/collections/b/documents", json={"documents": docs})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["message"].startswith("documents[2] (document 'bad'): embedding")
    assert vclient.get("/v1/collections/b").json()["count"] == 1


def test_an_embedding_of_other_types_is_refused(vclient: TestClient) -> None:
    for value in (["0.5"] * DIMS, [True] * DIMS, [[0.5]] * DIMS, 7):
        docs = [{"id": "x", "text": "t", "embedding": value}]
        resp = _post_ndjson(vclient, "t", docs)
        assert resp.status_code == 422 and resp.json()["error"]["message"].startswith("line 1"), (
            resp.text
        )
    assert vclient.get("/v1/collections/t").status_code == 404  # never created


def test_refit_and_rebuilds_use_the_stored_vectors(vclient: TestClient) -> None:
    """The texts are unrelated to their vectors: re-encoding them would lose every hit."""
    n = 3 * DIMS
    raw = raw_of(TEXTS[:n])
    docs = [
        {"id": f"i{i}", "text": _unrelated(i), "embedding": encode_base64(raw[i])} for i in range(n)
    ]
    assert _post_ndjson(vclient, "r", docs).json() == {"indexed": n, "count": n}
    refit = vclient.post("/v1/collections/r/whitening:refit").json()
    assert refit["whitening"]["version"] == 1 and refit["whitening"]["documents"] == n
    for i in (3, 17, n - 1):
        assert _top(vclient, "r", TEXTS[i])["id"] == f"i{i}"
    put = vclient.put("/v1/collections/r", json={"index": {"kind": "hnsw"}, "dims": DIMS - 4})
    assert put.status_code == 200, put.text
    for i in (5, 29):
        assert _top(vclient, "r", TEXTS[i])["id"] == f"i{i}"
