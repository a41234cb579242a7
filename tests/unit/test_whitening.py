from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.runtime.whitening import Whitening, WhiteningAccumulator


def _anisotropic(n: int = 5000, d: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = np.linalg.qr(rng.standard_normal((d, d)))[0] * np.linspace(5, 0.5, d)
    return (rng.standard_normal((n, d)) @ mix + 7.0).astype(np.float32)


def test_whitened_covariance_is_identity() -> None:
    x = _anisotropic()
    acc = WhiteningAccumulator(x.shape[1])
    acc.update(x)
    y = acc.fit().apply(x, normalize=False)
    assert np.abs(y.mean(axis=0)).max() < 1e-3
    assert np.allclose(np.cov(y, rowvar=False), np.eye(x.shape[1]), atol=1e-2)


def test_incremental_fit_equals_one_batch_fit() -> None:
    x = _anisotropic()
    one, many = WhiteningAccumulator(x.shape[1]), WhiteningAccumulator(x.shape[1])
    one.update(x)
    for chunk in np.array_split(x, 17):
        many.update(chunk)
    assert np.allclose(one.covariance(), many.covariance())
    assert np.allclose(one.covariance(), np.cov(x.astype(np.float64), rowvar=False))


def test_k_cut_keeps_leading_components_and_prefix_equals_cut() -> None:
    x = _anisotropic()
    acc = WhiteningAccumulator(x.shape[1])
    acc.update(x)
    full, cut = acc.fit(), acc.fit(k=8)
    assert cut.dims_out == 8
    y = cut.apply(x, normalize=False)
    assert np.allclose(np.cov(y, rowvar=False), np.eye(8), atol=1e-2)
    assert np.allclose(full.apply(x, dims=8), cut.apply(x), atol=1e-5)
    with pytest.raises(ValueError):
        acc.fit(k=99)


def test_identity_changes_nothing_but_normalises() -> None:
    x = _anisotropic(10)
    w = Whitening.identity(x.shape[1])
    assert not w.fitted
    assert np.allclose(w.apply(x, normalize=False), x)
    assert np.allclose(np.linalg.norm(w.apply(x), axis=1), 1.0)


def test_save_load_round_trip(tmp_path: Path) -> None:
    x = _anisotropic()
    acc = WhiteningAccumulator(x.shape[1])
    acc.update(x)
    w = acc.fit(k=10)
    w.save(tmp_path / "w.npz")
    back = Whitening.load(tmp_path / "w.npz")
    assert np.array_equal(back.apply(x), w.apply(x))
    Whitening.identity(5).save(tmp_path / "i.npz")
    assert not Whitening.load(tmp_path / "i.npz").fitted


def test_load_refuses_pickled_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, dims_in=np.array(3), mu=np.array([object()], dtype=object), w=np.eye(3))
    with pytest.raises(ValueError):
        Whitening.load(path)


def test_shape_errors_are_clear() -> None:
    acc = WhiteningAccumulator(4)
    with pytest.raises(ValueError, match="4 dims"):
        acc.update(np.zeros((3, 5)))
    acc.update(np.ones((4, 4)))
    with pytest.raises(ValueError, match="needs more than 4 texts"):
        acc.fit()
