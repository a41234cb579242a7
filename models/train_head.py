"""Train the pair head with scikit-learn, then keep only plain numbers.

Features come from `service.runtime.head.pair_features` (the serving definition). Graded gold
scores (STS 0–5) become soft labels: each pair appears once as 'similar' weighted by its
normalised score and once as 'dissimilar' weighted by the rest, so logistic regression fits
the graded target by cross-entropy. Binary files train as they are. A linear SVM is
calibrated on out-of-fold decision values (Platt or isotonic).

Features are standardised, and the cosine columns are then scaled up (`COSINE_BOOST`) so the
L2 penalty barely touches them: the head starts from the cosine and learns corrections from
the elementwise features, which stay strongly regularised. Rather than one C, the head
averages the models along the regularisation path, from the strongest penalty in the grid up
to the C with the best k-fold Spearman: the train split is harder than dev, so plain CV picks
too weak a penalty, and a hard one-standard-error cut flips between neighbours on noise. The
average of linear models is one linear model; standardisation and scaling are folded into
its weights, so serving is one dot product.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from service.runtime.head import COSINE_FEATURES, Calibration, PairHead, PairViews, pair_features
from service.runtime.stats import spearman

C_GRID = (0.0001, 0.0003, 0.001, 0.003)
COSINE_BOOST = 30.0


def _expand(
    x: np.ndarray, t: np.ndarray, binary: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, labels and sample weights for soft (graded) or hard (binary) targets."""
    if binary:
        return x, (t >= 0.5).astype(np.int64), np.ones(len(t))
    keep_pos, keep_neg = t > 0, t < 1
    rows = np.concatenate([x[keep_pos], x[keep_neg]])
    labels = np.concatenate([np.ones(keep_pos.sum()), np.zeros(keep_neg.sum())]).astype(np.int64)
    weights = np.concatenate([t[keep_pos], 1.0 - t[keep_neg]])
    return rows, labels, weights


def _fit_linear(kind: str, x: np.ndarray, t: np.ndarray, binary: bool, c: float, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    rows, labels, weights = _expand(x, t, binary)
    if kind == "lr":
        model = LogisticRegression(C=c, max_iter=3000, tol=1e-5)
    else:
        model = LinearSVC(
            C=c, loss="squared_hinge", dual="auto", max_iter=20_000, random_state=seed
        )
    model.fit(rows, labels, sample_weight=weights)
    return model


def _out_of_fold(
    kind: str,
    x: np.ndarray,
    t: np.ndarray,
    binary: bool,
    c: float,
    folds: int,
    seed: int,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Decision values of each pair from a model that did not see it (nor any row of its
    group: a pair read in both orders is one group)."""
    rng = np.random.default_rng(seed)
    if groups is None:
        fold_of = rng.permutation(len(t)) % folds
    else:
        fold_of = (rng.permutation(int(groups.max()) + 1) % folds)[groups]
    decision = np.empty(len(t))
    for f in range(folds):
        held = fold_of == f
        model = _fit_linear(kind, x[~held], t[~held], binary, c, seed)
        decision[held] = model.decision_function(x[held])
    return decision


def fit_calibration(kind: str, decision: np.ndarray, t: np.ndarray, binary: bool) -> Calibration:
    """Platt ('sigmoid') or isotonic map from decision values to targets in [0, 1] (graded
    targets as soft labels); used for the head and for the cross-encoder's raw scores."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    if kind == "isotonic":
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
        iso.fit(decision, t)
        return Calibration(
            "isotonic",
            x=tuple(map(float, iso.X_thresholds_)),
            y=tuple(map(float, iso.y_thresholds_)),
        )
    rows, labels, weights = _expand(decision.reshape(-1, 1), t, binary)
    platt = LogisticRegression(C=1e6, max_iter=1000).fit(rows, labels, sample_weight=weights)
    return Calibration("sigmoid", a=float(platt.coef_[0, 0]), b=float(platt.intercept_[0]))


@dataclass(frozen=True)
class LinearFit:
    """The average of linear models along the C path, on standardised features."""

    coef: np.ndarray
    intercept: float
    oof: np.ndarray
    """Out-of-fold decision values of the same average (for calibration)."""
    facts: dict[str, Any]


def fit_linear_path(
    x: np.ndarray,
    t: np.ndarray,
    kind: str,
    binary: bool,
    grid: tuple[float, ...] = C_GRID,
    folds: int = 4,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> LinearFit:
    """LR or linear SVM on standardised rows `x` with targets `t` in [0, 1]: k-fold Spearman
    picks the best C, and the models from the strongest penalty up to it are averaged."""
    cands = sorted(grid)
    cv = {cand: _out_of_fold(kind, x, t, binary, cand, folds, seed, groups) for cand in cands}
    rho = {cand: spearman(oof, t) for cand, oof in cv.items()}
    best_c = max(cands, key=lambda cand: rho[cand])
    path = [cand for cand in cands if cand <= best_c]
    best_oof = np.mean([cv[cand] for cand in path], axis=0)
    fits = [_fit_linear(kind, x, t, binary, cand, seed) for cand in path]
    coef = np.mean([np.asarray(m.coef_, dtype=np.float64).ravel() for m in fits], axis=0)
    intercept = float(np.mean([np.asarray(m.intercept_).ravel()[0] for m in fits]))
    facts = {
        "c": best_c,
        "c_path": path,
        "cv_spearman": round(100 * spearman(best_oof, t), 2),
        "cv_spearman_by_c": {str(k): round(100 * v, 2) for k, v in rho.items()},
    }
    return LinearFit(coef, intercept, best_oof, facts)


def train_head(
    views: PairViews,
    targets: np.ndarray,
    *,
    kind: str = "lr",
    calibration: str | None = None,
    binary: bool = False,
    c: float | None = None,
    folds: int = 4,
    seed: int = 0,
) -> tuple[PairHead, dict[str, Any]]:
    """Fit the head on pair views: the average of the models along the C path up to the
    cross-validated best.

    Returns the head and training facts (C, cross-validated Spearman x100, calibration).
    """
    if kind not in ("lr", "svm"):
        raise ValueError(f"head kind must be 'lr' or 'svm', got {kind!r}")
    calibration = calibration or ("logistic" if kind == "lr" else "sigmoid")
    if calibration not in ("logistic", "sigmoid", "isotonic"):
        raise ValueError(f"unknown calibration {calibration!r}")
    if kind == "svm" and calibration == "logistic":
        raise ValueError("an SVM needs sigmoid (Platt) or isotonic calibration")
    t = np.clip(np.asarray(targets, dtype=np.float64), 0.0, 1.0)
    feats = pair_features(views).astype(np.float64)
    mean = feats.mean(axis=0)
    scale = feats.std(axis=0)
    scale[scale < 1e-12] = 1.0
    scale[-COSINE_FEATURES:] /= COSINE_BOOST
    x = (feats - mean) / scale

    fit = fit_linear_path(x, t, kind, binary, (c,) if c is not None else C_GRID, folds, seed)
    weights = fit.coef / scale
    bias = float(fit.intercept - (fit.coef * mean / scale).sum())
    best_oof = fit.oof
    if calibration == "logistic":
        calib = Calibration("logistic")
    else:
        calib = fit_calibration(calibration, best_oof, t, binary)
    facts = {**fit.facts, "calibration": calibration}
    head = PairHead(
        kind="lr" if kind == "lr" else "svm",
        dims=views.white_a.shape[1],
        raw_dims=views.raw_a.shape[1],
        weights=weights.astype(np.float32),
        bias=bias,
        calibration=calib,
        threshold=0.5,
        training=facts,
    )
    return head, facts
