from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from service.runtime.stats import anisotropy, rankdata, spearman


def test_rankdata_averages_ties_like_scipy() -> None:
    x = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0]
    assert rankdata(x).tolist() == sps.rankdata(x).tolist()


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_scipy_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, size=300).astype(float)  # many ties, like STS gold
    b = a + rng.normal(0, 2, size=300)
    assert spearman(a, b) == pytest.approx(sps.spearmanr(a, b).statistic, abs=1e-12)


def test_anisotropy_tells_a_cone_from_a_sphere() -> None:
    rng = np.random.default_rng(0)
    sphere = rng.standard_normal((2000, 32)).astype(np.float32)
    cone = sphere * 0.1 + np.float32(3.0)  # every vector near one direction
    iso, aniso = anisotropy(sphere), anisotropy(cone)
    assert abs(iso["mean_cosine"]) < 0.05
    assert aniso["mean_cosine"] > 0.9
    assert iso["top10_variance_share"] < 0.2
