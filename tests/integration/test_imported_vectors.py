"""Imported vectors through the tiny real ONNX bundle: a text's raw vector imported ranks as
the text encoded, and `simsvc index` sends them from NDJSON and Parquet files."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from service.cli.main import main
from service.settings import Settings
from tests.builders import sentences
from tests.servers import Server

TEXTS = list(dict.fromkeys(sentences(90, seed=21)))[:48]


def _raw(post: Callable[..., Any], texts: list[str]) -> np.ndarray:
    """The bundle's raw vectors (no whitening, no normalisation), as a client would get them."""
    out = []
    for start in range(0, len(texts), 16):
        body = {"inputs": texts[start : start + 16], "whiten": False, "normalize": False}
        resp = post("/embed", json=body)
        assert resp.status_code == 200, resp.text
        out.extend(resp.json())
    return np.asarray(out, dtype=np.float32)


def test_an_imported_raw_vector_ranks_as_its_text_encoded(
    make_client: Callable[..., TestClient], tiny_bundle: Path, tmp_path: Path
) -> None:
    client = make_client(Settings(bundle=tiny_bundle, threads=1, data_dir=tmp_path))
    raw = _raw(client.post, TEXTS)
    encoded = [{"id": f"s{i}", "text": t} for i, t in enumerate(TEXTS)]
    imported = [{**d, "embedding": raw[i].tolist()} for i, d in enumerate(encoded)]
    for name, docs in (("encoded", encoded), ("imported", imported)):
        resp = client.post(f"/v1/collections/{name}/documents", json={"documents": docs})
        assert resp.json() == {"indexed": len(docs), "count": len(docs)}, resp.text

    def ranked(name: str, query: str, mode: str) -> list[tuple[str, float]]:
        body = {"query": query, "k": 10, "mode": mode}
        hits = client.post(f"/v1/collections/{name}/search", json=body).json()["results"]
        return [(h["id"], h["score"]) for h in hits]

    for query in (TEXTS[3], TEXTS[30], "a question none of them answers"):
        for mode in ("dense", "hybrid"):
            ours, theirs = ranked("imported", query, mode), ranked("encoded", query, mode)
            assert [i for i, _ in ours] == [i for i, _ in theirs], (query, mode)
            assert np.allclose([s for _, s in ours], [s for _, s in theirs], atol=1e-5)
    assert ranked("imported", TEXTS[3], "dense")[0][0] == "s3"


@pytest.fixture(params=["local", "postgres"])
def store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "local":
        return {}
    return {"SIMSVC_STORE": request.getfixturevalue("postgres_url")}


def _unrelated(i: int) -> str:
    return f"imported row {i} zyx{i}"


def test_simsvc_index_sends_vectors_from_ndjson_and_parquet(
    server_factory: Callable[..., Server],
    store_env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server = server_factory(tmp_path / "data", **store_env)
    raw = _raw(lambda path, **kw: httpx.post(server.url + path, **kw), TEXTS)
    n, dims = len(TEXTS), raw.shape[1]
    ids = [f"v{i}" for i in range(n)]
    texts = [_unrelated(i) for i in range(n)]

    # NDJSON with float lists; one line without a vector, encoded by the server.
    lines = [
        json.dumps({"id": ids[i], "text": texts[i], "embedding": raw[i].tolist()})
        for i in range(16)
    ]
    lines.append(json.dumps({"id": "plain", "text": TEXTS[20]}))
    ndjson = tmp_path / "vectors.jsonl"
    ndjson.write_text("\n".join(lines) + "\n")
    # Parquet: a fixed_size_list<float32> column, and a list<double> one with a missing row.
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(raw[16:32].ravel()), dims)
    pq.write_table(
        pa.table(
            {
                "id": ids[16:32],
                "text": texts[16:32],
                "metadata": [json.dumps({"n": i}) for i in range(16, 32)],
                "embedding": fixed,
            }
        ),
        tmp_path / "fixed.parquet",
    )
    as_lists: list[list[float] | None] = [raw[i].astype(np.float64).tolist() for i in range(32, n)]
    as_lists[-1] = None  # this row is encoded from its text
    rows = {"id": ids[32:n], "text": [*texts[32 : n - 1], TEXTS[n - 1]], "embedding": as_lists}
    pq.write_table(pa.table(rows), tmp_path / "lists.parquet", row_group_size=5)

    for path in ("vectors.jsonl", "fixed.parquet", "lists.parquet"):
        args = ["index", str(tmp_path / path), "--collection", "v", "--batch", "7"]
        assert main([*args, "--url", server.url, "--quiet"]) == 0, capsys.readouterr().err
    assert "holds 49" in capsys.readouterr().out

    def top(query: str, mode: str = "dense") -> dict[str, Any]:
        body = {"query": query, "k": 3, "mode": mode}
        resp = httpx.post(f"{server.url}/v1/collections/v/search", json=body)
        return dict(resp.json()["results"][0])

    for i in (0, 15, 16, 31, 32, n - 2):
        assert top(TEXTS[i])["id"] == ids[i], i
    assert top(TEXTS[20])["id"] in ("v20", "plain")
    assert top(TEXTS[n - 1])["id"] == ids[n - 1]  # encoded from its text
    assert top("zyx17", "lexical")["id"] == "v17"
    assert top(TEXTS[17])["metadata"] == {"n": 17}

    bad = tmp_path / "bad.parquet"
    pq.write_table(
        pa.table({"id": ["b0", "b1"], "text": ["x", "y"], "embedding": [[0.5] * dims, [0.5]]}),
        bad,
    )
    assert main(["index", str(bad), "--collection", "v", "--url", server.url, "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "line 2 (document 'b1'): embedding has 1 dimensions" in err, err
    info = httpx.get(f"{server.url}/v1/collections/v").json()
    assert info["count"] == 49


@pytest.mark.slow
def test_ray_engine_imports_vectors_from_parquet(
    server_factory: Callable[..., Server],
    tiny_bundle: Path,
    postgres_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("ray.data")
    server = server_factory(tmp_path / "data", SIMSVC_STORE=postgres_url)
    raw = _raw(lambda path, **kw: httpx.post(server.url + path, **kw), TEXTS[:20])
    rows = {
        "id": [f"r{i}" for i in range(20)],
        "text": [_unrelated(i) for i in range(20)],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(raw.ravel()), raw.shape[1]),
    }
    pq.write_table(pa.table(rows), tmp_path / "vectors.parquet")
    args = ["index", str(tmp_path / "vectors.parquet"), "--collection", "ray", "--engine", "ray"]
    args += ["--store", postgres_url, "--bundle", str(tiny_bundle), "--actors", "1", "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    for i in (2, 13):
        body = {"query": TEXTS[i], "k": 3, "mode": "dense"}
        hits = httpx.post(f"{server.url}/v1/collections/ray/search", json=body).json()["results"]
        assert hits[0]["id"] == f"r{i}" and hits[0]["score"] > 0.999
