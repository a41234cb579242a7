"""The relevance reranker part of a bundle, through real ONNX graphs: built beside the
cross-encoder, loaded, and used by /rerank and search `rerank`, while /predict and
/v1/similarity mode cross keep the similarity cross-encoder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.runtime.assembly import EngineOptions, cross_encoder_from_bundle
from service.runtime.bundle import RERANKER_MODEL_FILE, RERANKER_TOKENIZER_FILE, load_bundle
from service.runtime.cross import OnnxCrossEncoder, cross_logits, raw_scores, sigmoid
from service.settings import Settings
from tests.builders import sentences, write_tiny_cross_checkpoint
from tests.conftest import _tiny_build

RERANK_CARD = {"objective": "rerank", "max_length": 40, "dev_best": 61.5, "data": ["toy"]}


@pytest.fixture(scope="module")
def reranker_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny-reranker")
    return write_tiny_cross_checkpoint(root / "tiny-reranker", seed=9, card=RERANK_CARD)


@pytest.fixture(scope="module")
def both_bundle(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_checkpoint: Path,
    tiny_cross_checkpoint: Path,
    reranker_checkpoint: Path,
    tiny_data: dict[str, Path],
) -> Path:
    out = tmp_path_factory.mktemp("reranker-bundle") / "bundle"
    return _tiny_build(
        out,
        tiny_checkpoint,
        tiny_data,
        cross_model=str(tiny_cross_checkpoint),
        reranker=str(reranker_checkpoint),
    )


def _core(bundle_dir: Path, part: str) -> OnnxCrossEncoder:
    core = cross_encoder_from_bundle(load_bundle(bundle_dir), EngineOptions(threads=1), part)
    assert core is not None
    return core


def _raw(bundle_dir: Path, part: str, pairs: list[tuple[str, str]]) -> np.ndarray:
    return raw_scores(cross_logits(_core(bundle_dir, part), list(pairs)))


def test_the_reranker_part_is_recorded_with_its_card_and_parity(both_bundle: Path) -> None:
    manifest = load_bundle(both_bundle).manifest
    assert manifest.reranker is not None and manifest.cross is not None
    assert manifest.reranker.source.model == "tiny-reranker"
    assert manifest.reranker.card == RERANK_CARD
    assert manifest.reranker.max_length == 40  # the card's
    assert manifest.reranker.parity.max_abs_diff <= 1e-4
    assert manifest.reranker.parity.tokenizer_match
    assert manifest.reranker.symmetric is False
    assert manifest.reranker.calibration.kind == "logistic"
    assert {RERANKER_MODEL_FILE, RERANKER_TOKENIZER_FILE} <= set(manifest.files)
    assert not any(p.name.startswith(".") for p in both_bundle.iterdir())


def test_rerank_and_search_use_the_reranker_predict_and_similarity_the_cross_encoder(
    make_client: Callable[..., TestClient], both_bundle: Path, tmp_path: Path
) -> None:
    client = make_client(Settings(bundle=both_bundle, threads=1, data_dir=tmp_path))
    texts = list(dict.fromkeys(sentences(40, seed=21)))[:12]
    query = texts[3]
    pairs = [(query, t) for t in texts]
    by_reranker = _raw(both_bundle, "reranker", pairs)
    by_cross = _raw(both_bundle, "cross", pairs)
    assert np.abs(by_reranker - by_cross).max() > 1e-3  # two different models

    ranks = client.post("/rerank", json={"query": query, "texts": texts, "raw_scores": True})
    assert ranks.status_code == 200, ranks.text
    assert [r["index"] for r in ranks.json()] == list(np.argsort(-by_reranker, kind="stable"))
    assert np.allclose([r["score"] for r in ranks.json()], np.sort(by_reranker)[::-1], atol=1e-5)

    preds = client.post("/predict", json={"inputs": [list(p) for p in pairs]}).json()
    assert np.allclose([p[0]["score"] for p in preds], sigmoid(by_cross), atol=1e-5)
    sim = client.post(
        "/v1/similarity", json={"pairs": [{"a": a, "b": b} for a, b in pairs], "mode": "cross"}
    ).json()
    assert sim["model"] == "tiny-cross"

    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)]
    assert client.post("/v1/collections/c/documents", json={"documents": docs}).status_code == 200
    body: dict[str, Any] = {"query": query, "k": 8, "mode": "hybrid", "explain": True}
    plain = client.post("/v1/collections/c/search", json=body).json()["results"]
    ranked = client.post(
        "/v1/collections/c/search", json={**body, "rerank": {"candidates": 5}}
    ).json()["results"]
    top = [h["text"] for h in plain[:5]]
    expected = _raw(both_bundle, "reranker", [(query, t) for t in top])
    assert [h["text"] for h in ranked[:5]] == [top[i] for i in np.argsort(-expected, kind="stable")]
    assert np.allclose([h["score"] for h in ranked[:5]], sigmoid(np.sort(expected)[::-1]))

    info = client.get("/info").json()
    assert info["rerank_model"] == {"part": "reranker", "model": "tiny-reranker"}
    assert info["reranker"]["card"] == RERANK_CARD
    assert info["cross_encoder"]["model"] == "tiny-cross"


def test_a_bundle_with_only_a_reranker_reranks_but_has_no_pair_cross_encoder(
    make_client: Callable[..., TestClient],
    tiny_checkpoint: Path,
    reranker_checkpoint: Path,
    tiny_data: dict[str, Path],
    tmp_path: Path,
) -> None:
    out = _tiny_build(
        tmp_path / "bundle", tiny_checkpoint, tiny_data, reranker=str(reranker_checkpoint)
    )
    client = make_client(Settings(bundle=out, threads=1))
    ranks = client.post("/rerank", json={"query": "the man", "texts": ["a man", "the dog"]})
    assert ranks.status_code == 200, ranks.text
    assert client.post("/predict", json={"inputs": ["a", "b"]}).status_code == 424
    pairs = [{"a": "a man", "b": "the man"}]
    assert client.post("/v1/similarity", json={"pairs": pairs, "mode": "cross"}).status_code == 424
    info = client.get("/info").json()
    assert info["cross_encoder"] is None
    assert info["rerank_model"] == {"part": "reranker", "model": "tiny-reranker"}
