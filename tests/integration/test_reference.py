"""Acceptance on the reference checkpoints in ../shared (minutes on 2 cores)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.runtime.bundle import load_bundle
from service.settings import Settings

pytestmark = pytest.mark.slow


def _figures(bundle: Path, dev: str) -> dict[str, float]:
    return dict(load_bundle(bundle).manifest.evaluation[dev]["spearman"])


def test_english_reference_meets_the_acceptance_figures(reference_bundle_en: Path) -> None:
    s = _figures(reference_bundle_en, "dev.tsv")
    print("refbert-en STS-B dev Spearman x100:", s)
    assert s["raw_cosine"] == pytest.approx(66.6, abs=0.5)  # the checkpoint's own figure
    assert s["whitened_cosine"] >= 74.0
    assert s["head_probability"] >= s["whitened_cosine"] + 2.0


def test_chinese_reference_whitening_and_head_help(reference_bundle_zh: Path) -> None:
    s = _figures(reference_bundle_zh, "dev.txt")
    print("refbert-zh Chinese STS-B dev Spearman x100:", s)
    assert s["raw_cosine"] == pytest.approx(65.0, abs=0.5)
    assert s["whitened_cosine"] >= 73.0  # reference figure: 73.3
    # The head gains +1.4 here (+2.2 on English); see the issue notes for what was tried.
    assert s["head_probability"] >= s["whitened_cosine"] + 1.0


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_reference_onnx_parity(lang: str, request: pytest.FixtureRequest) -> None:
    bundle = load_bundle(request.getfixturevalue(f"reference_bundle_{lang}"))
    assert set(bundle.manifest.parity) == {"cls", "pooler", "mean", "first_last_avg"}
    for name, figures in bundle.manifest.parity.items():
        assert figures.min_cosine >= 0.99999, name


def test_service_on_the_english_reference(
    make_client: Callable[..., TestClient], reference_bundle_en: Path
) -> None:
    client = make_client(Settings(bundle=reference_bundle_en))
    results = client.post(
        "/v1/similarity",
        json={
            "pairs": [
                {"a": "A man is playing a guitar.", "b": "A man plays the guitar."},
                {"a": "A man is playing a guitar.", "b": "The stock market fell sharply today."},
            ]
        },
    ).json()["results"]
    assert results[0]["score"] > results[1]["score"]
    assert results[0]["probability"] > 0.5 > results[1]["probability"]
    assert results[0]["similar"] is True and results[1]["similar"] is False


def test_int8_english_reference_stays_within_a_point_of_fp32(shared: Path, tmp_path: Path) -> None:
    from models.build import BuildOptions, build_bundle

    train = shared / "data" / "stsb-en" / "train.tsv"
    manifest = build_bundle(
        BuildOptions(
            model=str(shared / "models" / "refbert-en-L6-H384"),
            out=tmp_path / "int8",
            pooling="first_last_avg",
            whiten_on=[train],
            head_pairs=train,
            eval_on=[shared / "data" / "stsb-en" / "dev.tsv"],
            quantize="int8",
        ),
        say=lambda _m: None,
    )
    assert manifest.quantization is not None
    figures = manifest.quantization.spearman["dev.tsv"]
    print("refbert-en int8 vs fp32 graph, STS-B dev:", figures)
    for key in ("raw_cosine", "whitened_cosine", "head_probability"):
        assert abs(figures["int8"][key] - figures["fp32"][key]) <= 1.0, key
