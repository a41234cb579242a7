"""Collections through a real ONNX BERT (the tiny one): in process, and as a real server
that is killed with SIGKILL in the middle of a bulk upload."""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.cli.main import main
from service.runtime.lexical import terms as lexical_terms
from service.settings import Settings
from tests.builders import sentences
from tests.servers import Server


def test_collections_through_a_real_onnx_bundle(
    make_client: Callable[..., TestClient], tiny_bundle: Path, tmp_path: Path
) -> None:
    client = make_client(Settings(bundle=tiny_bundle, threads=1, data_dir=tmp_path))
    texts = list(dict.fromkeys(sentences(80, seed=11)))[:60]
    body = "".join(
        json.dumps({"id": f"s{i}", "text": t, "metadata": {"odd": i % 2 == 1}}) + "\n"
        for i, t in enumerate(texts)
    )
    resp = client.post(
        "/v1/collections/tiny/documents",
        content=body,
        headers={"content-type": "application/x-ndjson"},
    )
    assert resp.json() == {"indexed": 60, "count": 60}, resp.text
    info = client.get("/v1/collections/tiny").json()
    assert info["dims"] == 24 and info["model"]["raw_dims"] == 32  # the bundle's k cut

    def top(query: str, **where: Any) -> dict[str, Any]:
        found = client.post(
            "/v1/collections/tiny/search",
            json={"query": query, "k": 3, "filter": where, "mode": "dense"},
        ).json()["results"]
        return dict(found[0])

    assert top(texts[7])["id"] == "s7" and top(texts[7])["score"] > 0.999
    assert top(texts[7], odd=False)["metadata"] == {"odd": False}
    refit = client.post("/v1/collections/tiny/whitening:refit").json()
    assert refit["whitening"]["version"] == 1 and refit["whitening"]["documents"] == 60
    assert top(texts[7])["id"] == "s7"
    for kind in ("hnsw", "ivf"):
        put = client.put("/v1/collections/tiny", json={"index": {"kind": kind}})
        assert put.json()["index"]["kind"] == kind
        assert top(texts[31])["id"] == "s31"
    # Lexical and hybrid through the same real bundle: a text finds itself first.
    for mode in ("lexical", "hybrid"):
        answer = client.post(
            "/v1/collections/tiny/search",
            json={"query": texts[12], "k": 5, "mode": mode, "explain": True},
        ).json()
        assert answer["mode"] == mode and answer["results"][0]["id"] == "s12", answer
        assert "lexical" in answer["results"][0]["sources"]


def test_cli_indexes_resumably_searches_and_evaluates(
    server_factory: Callable[..., Server],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = json.dumps([{"name": "ci", "key": "secret-key", "scopes": ["admin"]}])
    server = server_factory(tmp_path / "data", SIMSVC_API_KEYS=keys)
    monkeypatch.setenv("SIMSVC_API_KEY", "secret-key")
    texts = list(dict.fromkeys(sentences(60, seed=5)))[:30]
    lines = [
        json.dumps({"_id": str(i), "title": f"doc {i}", "text": t}) for i, t in enumerate(texts)
    ]
    corpus = tmp_path / "corpus.jsonl"
    broken = [*lines[:12], json.dumps({"_id": "12"}), *lines[13:]]  # line 13 lacks its text
    corpus.write_text("\n".join(broken) + "\n")
    args = ["index", str(corpus), "--collection", "docs", "--batch", "5", "--url", server.url]

    assert main(args) == 1
    err = capsys.readouterr().err
    assert "lines 11-15" in err and "text" in err and "resume" in err
    assert "indexing docs" in err  # the progress bar
    state = corpus.with_name("corpus.jsonl.docs.simsvc-index")
    assert json.loads(state.read_text())["lines"] == 10

    corpus.write_text("\n".join(lines) + "\n")  # fixed; the first 10 lines are unchanged
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "resuming after 10 lines" in err and "30/30" in err
    assert "20 documents indexed" in out and "holds 30" in out
    assert not state.exists()

    assert main(["search", "--collection", "docs", texts[21], "-k", "3", "--url", server.url]) == 0
    first = capsys.readouterr().out.splitlines()[0].split()
    assert first[0] == "1" and first[2] == "21"

    queries = tmp_path / "queries.jsonl"
    queries.write_text(
        "".join(
            json.dumps({"_id": f"q{i}", "text": f"doc {i} {t}"}) + "\n" for i, t in enumerate(texts)
        )
    )
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\t{i}\t1\n" for i in range(len(texts)))
    )
    evaluate = ["evaluate-retrieval", "--collection", "docs", "--queries", str(queries)]
    assert main([*evaluate, "--qrels", str(qrels), "--url", server.url, "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["queries"] == 30 and figures["ndcg@10"] > 0.95 and figures["recall@100"] == 1.0
    assert figures["mode"] == "default" and figures["mrr@10"] > 0.9
    modes = ["--mode", "dense,lexical", "--mode", "hybrid"]
    assert main([*evaluate, "--qrels", str(qrels), "--url", server.url, "--json", *modes]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["mode"] for r in rows] == ["dense", "lexical", "hybrid"]
    assert all(r["ndcg@10"] > 0.9 for r in rows)

    tune = ["tune-search", "--collection", "docs", "--queries", str(queries), "--depth", "20"]
    assert main([*tune, "--qrels", str(qrels), "--url", server.url, "--json", "--apply"]) == 0
    tuned = json.loads(capsys.readouterr().out)
    assert tuned["queries"] == 30 and tuned["applied"] and len(tuned["top"]) == 10
    best = tuned["best"]
    assert best["ndcg@10"] == max(tuned["best_per_mode"].values()) > 0.9
    auth = {"authorization": "Bearer secret-key"}
    info = httpx.get(f"{server.url}/v1/collections/docs", headers=auth).json()
    assert info["search"]["mode"] == best["mode"], info["search"]
    if best["mode"] == "hybrid":
        assert info["search"]["fusion"] == best["fusion"], info["search"]
    # The applied default is what a search without a mode now runs.
    answer = httpx.post(
        f"{server.url}/v1/collections/docs/search", json={"query": texts[3]}, headers=auth
    ).json()
    assert answer["mode"] == best["mode"]

    monkeypatch.setenv("SIMSVC_API_KEY", "wrong")
    assert main(["search", "--collection", "docs", "x", "--url", server.url]) == 1
    assert "401" in capsys.readouterr().err


class Uploader(threading.Thread):
    """Sends batches one request at a time, every other one as a slow NDJSON stream, and
    records what was acknowledged; stops at the first connection error (the kill)."""

    def __init__(self, url: str, make_batch: Callable[[int], list[dict[str, Any]]]) -> None:
        super().__init__()
        self.url, self.make_batch = url, make_batch
        self.acked: list[list[dict[str, Any]]] = []
        self.in_flight: list[dict[str, Any]] | None = None
        self.failures: list[str] = []
        self.streaming = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            for version in itertools.count():
                batch = self.in_flight = self.make_batch(version)
                try:
                    if version % 2:  # a stream that takes about 0.1 s: the kill's target
                        self.streaming.set()
                        resp = http.post(
                            "/v1/collections/k/documents",
                            content=self._slowly(batch),
                            headers={"content-type": "application/x-ndjson"},
                        )
                    else:
                        resp = http.post("/v1/collections/k/documents", json={"documents": batch})
                except httpx.TransportError:
                    return  # killed mid-request: this batch's fate is unknown
                if resp.status_code != 200:
                    self.failures.append(resp.text)
                    return
                self.acked.append(batch)
                self.in_flight = None

    @staticmethod
    def _slowly(docs: list[dict[str, Any]]) -> Iterator[bytes]:
        for doc in docs:
            yield json.dumps(doc).encode() + b"\n"
            time.sleep(0.012)


@pytest.fixture(params=["local", "postgres"])
def store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment that points a server at each store."""
    if request.param == "local":
        return {}
    return {"SIMSVC_STORE": request.getfixturevalue("postgres_url")}


def test_sigkill_mid_upload_loses_no_acknowledged_document(
    server_factory: Callable[..., Server], tmp_path: Path, store_env: dict[str, str]
) -> None:
    """Kill -9 while a request is in flight, restart on the same data: every acknowledged
    document is there once, the in-flight request entirely or not at all, and the index
    agrees with the store. Twice, the second time after a recovery."""
    data = tmp_path / "data"
    env = {
        "SIMSVC_INDEX_BATCH_DOCUMENTS": "4",
        "SIMSVC_INDEX_SNAPSHOT_EVERY": "25",
        **store_env,
    }
    pool = list(dict.fromkeys(sentences(2000, seed=9)))
    rng = random.Random(0)
    expected: dict[str, dict[str, Any]] = {}  # id -> the last acknowledged version
    numbers = itertools.count()

    def make_batch(version: int) -> list[dict[str, Any]]:
        known = rng.sample(sorted(expected), min(3, len(expected)))  # updates of acked docs
        ids = known + [f"doc-{next(numbers)}" for _ in range(8)]
        return [{"id": i, "text": pool.pop(), "metadata": {"v": version, "id": i}} for i in ids]

    for cycle in range(2):
        server = server_factory(data, **env)
        uploader = Uploader(server.url, make_batch)
        uploader.start()
        deadline = time.monotonic() + 60
        while len(uploader.acked) < 6 + 4 * cycle:
            assert time.monotonic() < deadline and uploader.is_alive(), uploader.failures
            time.sleep(0.01)
        uploader.streaming.clear()
        assert uploader.streaming.wait(10)
        # Mid-stream the first time; about when the stream ends (encoding, commit, snapshot,
        # answer) the second.
        time.sleep(rng.uniform(0.02, 0.08) if cycle == 0 else rng.uniform(0.12, 0.2))
        server.kill()
        uploader.join(30)
        assert not uploader.failures, uploader.failures
        unknown = uploader.in_flight
        assert unknown is not None, "the kill must land while a request is in flight"
        for batch in uploader.acked:
            expected.update((doc["id"], doc) for doc in batch)

        server = server_factory(data, **env)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            probe = http.get(f"/v1/collections/k/documents/{unknown[-1]['id']}")
            if probe.status_code == 200 and probe.json()["text"] == unknown[-1]["text"]:
                # Committed before the kill though never acknowledged: then all of it.
                expected.update((doc["id"], doc) for doc in unknown)
            info = http.get("/v1/collections/k").json()
            assert info["count"] == len(expected)
            assert info["index"]["vectors"] == len(expected)  # flat: nothing indexed twice
            # The lexical index holds exactly the acknowledged documents' terms.
            terms = sum(len(lexical_terms("english", d["text"])) for d in expected.values())
            assert info["lexical"]["terms"] == terms
            for doc in expected.values():
                got = http.get(f"/v1/collections/k/documents/{doc['id']}").json()
                assert got == doc  # whole, and the last acknowledged version
            everything = http.post(
                "/v1/collections/k/search",
                json={"query": "the", "k": len(expected), "mode": "dense"},
            ).json()["results"]
            assert sorted(h["id"] for h in everything) == sorted(expected)
            for doc in rng.sample(sorted(expected.values(), key=lambda d: d["id"]), 15):
                hit = http.post(
                    "/v1/collections/k/search",
                    json={"query": doc["text"], "k": 1, "mode": "dense"},
                ).json()["results"][0]
                assert hit["id"] == doc["id"] and hit["text"] == doc["text"]
                found = http.post(
                    "/v1/collections/k/search",
                    json={"query": doc["text"], "k": len(expected), "mode": "lexical"},
                ).json()["results"]
                if lexical_terms("english", doc["text"]):  # not stop words only
                    assert [h["id"] for h in found].count(doc["id"]) == 1
        server.stop()
