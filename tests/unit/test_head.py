from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.train_head import train_head
from service.runtime.head import (
    Calibration,
    PairHead,
    PairViews,
    feature_dims,
    make_views,
    pair_features,
)
from service.runtime.stats import l2_normalize, spearman
from service.runtime.whitening import WhiteningAccumulator


def _views(n: int = 600, d: int = 12, seed: int = 0) -> tuple[PairViews, np.ndarray]:
    """Pairs whose gold similarity follows a weighted cosine of the whitened vectors."""
    rng = np.random.default_rng(seed)
    raw = (rng.standard_normal((2 * n, d)) * np.linspace(3, 0.2, d) + 2).astype(np.float32)
    acc = WhiteningAccumulator(d)
    acc.update(raw)
    w = acc.fit()
    views = make_views(raw, w, np.arange(n), np.arange(n, 2 * n))
    weights = np.linspace(2.0, 0.0, d)
    gold = (views.white_a * views.white_b * weights).sum(1) + rng.normal(0, 0.05, n)
    target = (gold - gold.min()) / (gold.max() - gold.min())
    return views, target


def test_pair_features_are_symmetric_with_cosines_last() -> None:
    views, _ = _views(50)
    swapped = PairViews(views.white_b, views.white_a, views.raw_b, views.raw_a)
    f = pair_features(views)
    assert np.allclose(f, pair_features(swapped))
    assert f.shape == (50, feature_dims(12, 12))
    assert np.allclose(f[:, -1], (views.white_a * views.white_b).sum(1), atol=1e-6)
    assert np.allclose(f[:, -2], (views.raw_a * views.raw_b).sum(1), atol=1e-6)


def test_make_views_normalises_both_geometries() -> None:
    views, _ = _views(20)
    for arr in (views.white_a, views.raw_b):
        assert np.allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(views.white_a, views.raw_a)


@pytest.mark.parametrize(
    ("kind", "calibration"), [("lr", None), ("svm", "sigmoid"), ("svm", "isotonic")]
)
def test_trained_head_beats_plain_cosine_and_round_trips(
    tmp_path: Path, kind: str, calibration: str | None
) -> None:
    views, target = _views()
    test_views, test_target = _views(seed=1)
    head, facts = train_head(views, target, kind=kind, calibration=calibration)
    prob = head.probability(test_views)
    assert prob.min() >= 0.0 and prob.max() <= 1.0
    cosine = (test_views.white_a * test_views.white_b).sum(1)
    assert spearman(prob, test_target) > spearman(cosine, test_target) + 0.02
    assert facts["c"] in (0.0001, 0.0003, 0.001, 0.003)
    head.save(tmp_path / "head.json")
    back = PairHead.load(tmp_path / "head.json")
    assert np.allclose(back.probability(test_views), prob)


def test_lr_probability_tracks_soft_targets() -> None:
    views, target = _views()
    head, _ = train_head(views, target)
    prob = head.probability(views)
    # Calibrated: high-target pairs get high probability, low-target ones low.
    assert prob[target > 0.8].mean() > 0.6 > 0.4 > prob[target < 0.2].mean()


def test_svm_refuses_logistic_calibration() -> None:
    views, target = _views(60)
    with pytest.raises(ValueError, match="SVM"):
        train_head(views, target, kind="svm", calibration="logistic")


def test_head_rejects_wrong_shapes_and_foreign_features() -> None:
    with pytest.raises(ValueError, match="expected"):
        PairHead("lr", 4, 4, np.zeros(3, dtype=np.float32), 0.0, Calibration("logistic"))
    data = PairHead(
        "lr", 2, 2, np.zeros(feature_dims(2, 2), dtype=np.float32), 0.0, Calibration("logistic")
    ).to_dict()
    data["features"] = "something-else/v9"
    with pytest.raises(ValueError, match="features"):
        PairHead.from_dict(data)


def test_isotonic_calibration_is_monotone_interpolation() -> None:
    cal = Calibration.from_dict({"kind": "isotonic", "x": [0, 1, 2], "y": [0.1, 0.5, 0.9]})
    assert np.allclose(cal(np.array([-5.0, 0.5, 1.5, 7.0])), [0.1, 0.3, 0.7, 0.9])
    with pytest.raises(ValueError):
        Calibration.from_dict({"kind": "isotonic", "x": [1, 0], "y": [0, 1]})


def test_l2_normalize_keeps_zero_rows() -> None:
    x = np.array([[0, 0], [3, 4]], dtype=np.float32)
    assert np.allclose(l2_normalize(x), np.array([[0.0, 0.0], [0.6, 0.8]]))
