"""The pair head: a linear model on pair features of whitened vectors, with calibration.

`pair_features` is the one definition used both to train the head (models/train_head.py)
and to serve it, so the two cannot drift apart. The head itself is plain numbers in JSON.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from service.runtime.stats import l2_normalize
from service.runtime.types import FloatArray
from service.runtime.whitening import Whitening

FEATURES_VERSION = "white+raw:prod-absdiff-cos/v2"
HeadKind = Literal["lr", "svm"]
CalibrationKind = Literal["logistic", "sigmoid", "isotonic"]


@dataclass(frozen=True)
class PairViews:
    """Both sides of n pairs in two geometries, each row L2-normalised.

    `white_*`: the whitened vectors the service scores with; `raw_*`: the same pooled vectors
    before whitening. Whitening (full k) is an invertible affine map, so the raw view adds no
    information, only a second geometry in which the head can find corrections.
    """

    white_a: FloatArray
    white_b: FloatArray
    raw_a: FloatArray
    raw_b: FloatArray


def make_views(
    raw: FloatArray,
    whitening: Whitening,
    ia: np.ndarray,
    ib: np.ndarray,
    white: FloatArray | None = None,
) -> PairViews:
    """Views of pairs (ia[i], ib[i]) of rows of `raw` pooled vectors.

    `white` may pass the already-whitened, normalised rows to avoid whitening twice.
    """
    white = whitening.apply(raw) if white is None else white
    unit = l2_normalize(raw)
    return PairViews(white[ia], white[ib], unit[ia], unit[ib])


def pair_features(views: PairViews) -> FloatArray:
    """[w_a*w_b, |w_a-w_b|, r_a*r_b, |r_a-r_b|, cos(r_a, r_b), cos(w_a, w_b)] per pair.

    Symmetric in a and b, so the head scores (a, b) and (b, a) alike. The two cosines come
    last: training penalises them less (see models/train_head.py).
    """
    parts: list[np.ndarray] = []
    cosines: list[np.ndarray] = []
    for a, b in ((views.white_a, views.white_b), (views.raw_a, views.raw_b)):
        if a.shape != b.shape or a.ndim != 2:
            raise ValueError(f"pair views need (n, d) arrays of one shape: {a.shape} {b.shape}")
        prod = a * b
        parts += [prod, np.abs(a - b)]
        cosines.append(prod.sum(axis=1, keepdims=True))
    return np.concatenate([*parts, cosines[1], cosines[0]], axis=1).astype(np.float32, copy=False)


COSINE_FEATURES = 2
"""The last columns of `pair_features` that are cosines."""


def feature_dims(white_dims: int, raw_dims: int) -> int:
    """Length of `pair_features` rows."""
    return 2 * white_dims + 2 * raw_dims + COSINE_FEATURES


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)))


@dataclass(frozen=True)
class Calibration:
    """Maps a decision value to a probability.

    logistic: sigmoid(d) (logistic regression is calibrated by its loss);
    sigmoid: Platt scaling sigmoid(a*d + b); isotonic: piecewise-linear through (x, y).
    """

    kind: CalibrationKind
    a: float = 1.0
    b: float = 0.0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    def __call__(self, d: np.ndarray) -> np.ndarray:
        if self.kind == "logistic":
            return _sigmoid(d)
        if self.kind == "sigmoid":
            return _sigmoid(self.a * d + self.b)
        return np.asarray(np.interp(d, np.asarray(self.x), np.asarray(self.y)))

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "logistic":
            return {"kind": "logistic"}
        if self.kind == "sigmoid":
            return {"kind": "sigmoid", "a": self.a, "b": self.b}
        return {"kind": "isotonic", "x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        kind = data.get("kind")
        if kind == "logistic":
            return cls("logistic")
        if kind == "sigmoid":
            return cls("sigmoid", a=float(data["a"]), b=float(data["b"]))
        if kind == "isotonic":
            x = tuple(float(v) for v in data["x"])
            y = tuple(float(v) for v in data["y"])
            if len(x) != len(y) or len(x) < 2 or any(b < a for a, b in itertools.pairwise(x)):
                raise ValueError("isotonic calibration needs >= 2 increasing x with matching y")
            return cls("isotonic", x=x, y=y)
        raise ValueError(f"unknown calibration kind {kind!r}")


@dataclass(frozen=True)
class PairHead:
    """p(similar | a, b) = calibration(w · pair_features(a, b) + bias)."""

    kind: HeadKind
    dims: int
    raw_dims: int
    weights: FloatArray
    bias: float
    calibration: Calibration
    threshold: float = 0.5
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        expected = feature_dims(self.dims, self.raw_dims)
        if self.weights.shape != (expected,):
            raise ValueError(
                f"head weights have shape {self.weights.shape}, expected ({expected},) for "
                f"{self.dims}-dim whitened and {self.raw_dims}-dim raw vectors"
            )

    def decision(self, views: PairViews) -> np.ndarray:
        """The linear decision value of each pair."""
        return np.asarray(pair_features(views) @ self.weights + self.bias, dtype=np.float64)

    def probability(self, views: PairViews) -> np.ndarray:
        """Calibrated probability that each pair is similar."""
        return np.asarray(np.clip(self.calibration(self.decision(views)), 0.0, 1.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "features": FEATURES_VERSION,
            "dims": self.dims,
            "raw_dims": self.raw_dims,
            "weights": [float(w) for w in self.weights],
            "bias": float(self.bias),
            "calibration": self.calibration.to_dict(),
            "threshold": self.threshold,
            "training": self.training,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PairHead:
        if data.get("features") != FEATURES_VERSION:
            raise ValueError(
                f"head features {data.get('features')!r} differ from this runtime's "
                f"{FEATURES_VERSION!r}"
            )
        kind = data.get("kind")
        if kind not in ("lr", "svm"):
            raise ValueError(f"unknown head kind {kind!r}")
        return cls(
            kind=kind,
            dims=int(data["dims"]),
            raw_dims=int(data["raw_dims"]),
            weights=np.asarray(data["weights"], dtype=np.float32),
            bias=float(data["bias"]),
            calibration=Calibration.from_dict(data["calibration"]),
            threshold=float(data.get("threshold", 0.5)),
            training=dict(data.get("training", {})),
        )

    def save(self, path: Path) -> None:
        """Write the head as JSON."""
        path.write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path) -> PairHead:
        """Read a head written by `save`."""
        return cls.from_dict(json.loads(path.read_text()))
