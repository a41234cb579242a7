"""Bulk indexing on Ray Data into a real PostgreSQL, through a real ONNX BERT (the tiny one):
the collection it builds searches the same as one built through HTTP, and it resumes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.cli.main import main
from tests.builders import sentences
from tests.servers import Server

# Slow tier: two local Ray clusters start and stop here (most of a minute on 2 cores). The
# fast tier covers the same tiny bundle indexing into PostgreSQL through HTTP.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_available() -> None:
    try:
        import ray.data  # noqa: F401
    except ImportError:
        hint = "needs Ray Data (the dev extra's ray[data])"
        if os.environ.get("CI"):
            pytest.fail(hint)
        pytest.skip(hint)


def _corpus(n: int) -> list[dict[str, Any]]:
    texts = list(dict.fromkeys(sentences(4 * n, seed=41)))[:n]
    return [{"_id": f"p{i}", "title": f"part {i % 7}", "text": t} for i, t in enumerate(texts)]


def test_ray_indexes_into_postgres_like_http_and_resumes(
    ray_available: None,
    server_factory: Callable[..., Server],
    tiny_bundle: Path,
    postgres_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    corpus = _corpus(90)
    first = tmp_path / "first.jsonl"
    first.write_text("".join(json.dumps(d) + "\n" for d in corpus[:60]))
    rest = tmp_path / "rest.jsonl"
    rest.write_text("".join(json.dumps(d) + "\n" for d in corpus[60:]))
    ray_args = ["index", "--collection", "by-ray", "--engine", "ray", "--store", postgres_url]
    ray_args += ["--bundle", str(tiny_bundle), "--actors", "2", "--batch", "16", "--quiet"]

    assert main([*ray_args[:1], str(first), *ray_args[1:]]) == 0
    assert "60 documents indexed into by-ray" in capsys.readouterr().out
    # Both files: the first one's documents are there already and are skipped.
    assert main([*ray_args[:1], str(first), str(rest), *ray_args[1:]]) == 0
    out = capsys.readouterr().out
    assert "30 documents indexed" in out and "60 already there" in out and "holds 90" in out

    server = server_factory(tmp_path / "data", SIMSVC_STORE=postgres_url)
    both = tmp_path / "both.jsonl"
    both.write_text(first.read_text() + rest.read_text())
    http_args = ["index", str(both), "--collection", "by-http", "--url", server.url, "--quiet"]
    assert main(http_args) == 0
    capsys.readouterr()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        infos = {n: http.get(f"/v1/collections/{n}").json() for n in ("by-ray", "by-http")}
        assert infos["by-ray"]["count"] == infos["by-http"]["count"] == 90
        assert infos["by-ray"]["dims"] == infos["by-http"]["dims"]
        doc = http.get("/v1/collections/by-ray/documents/p7").json()
        assert doc == http.get("/v1/collections/by-http/documents/p7").json()
        assert doc["metadata"] == {"title": "part 0"}
        for query in [corpus[i]["text"] for i in (3, 41, 77)] + ["the dog", "a red car"]:
            hits = {
                n: http.post(f"/v1/collections/{n}/search", json={"query": query, "k": 10}).json()
                for n in infos
            }
            ray_hits, http_hits = hits["by-ray"]["results"], hits["by-http"]["results"]
            assert [h["id"] for h in ray_hits] == [h["id"] for h in http_hits]
            for a, b in zip(ray_hits, http_hits, strict=True):
                assert a["score"] == pytest.approx(b["score"], abs=1e-5)
