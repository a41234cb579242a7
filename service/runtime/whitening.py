"""BERT-whitening (Su et al. 2021): x' = (x - mu) W_k, with W = U Λ^(-1/2) from the covariance.

One implementation serves fitting (offline) and serving. The fit accumulates the mean and the
covariance batch by batch, so a corpus larger than memory works. Saved as plain arrays (npz).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.runtime.stats import l2_normalize
from service.runtime.types import Float64Array, FloatArray


class WhiteningAccumulator:
    """Streaming sums for the mean and covariance of the vectors seen so far (float64)."""

    def __init__(self, dims: int) -> None:
        self.dims = dims
        self.count = 0
        self._sum: Float64Array = np.zeros(dims, dtype=np.float64)
        self._outer: Float64Array = np.zeros((dims, dims), dtype=np.float64)

    def update(self, x: np.ndarray) -> None:
        """Add a batch of row vectors."""
        batch = np.asarray(x, dtype=np.float64)
        if batch.ndim != 2 or batch.shape[1] != self.dims:
            raise ValueError(f"expected vectors of {self.dims} dims, got shape {batch.shape}")
        self.count += batch.shape[0]
        self._sum += batch.sum(axis=0)
        self._outer += batch.T @ batch

    def mean(self) -> Float64Array:
        """Mean of the vectors seen."""
        if self.count == 0:
            raise ValueError("no vectors accumulated")
        return self._sum / self.count

    def covariance(self) -> Float64Array:
        """Unbiased covariance of the vectors seen."""
        if self.count < 2:
            raise ValueError("whitening needs at least two vectors")
        mu = self.mean()
        cov = (self._outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return (cov + cov.T) / 2.0

    def fit(self, k: int | None = None, eps: float = 1e-9) -> Whitening:
        """The whitening transform of the vectors seen, keeping the first k components.

        Needs more vectors than dims: with fewer, the covariance is singular and the null
        directions would be blown up into noise.
        """
        if self.count <= self.dims:
            raise ValueError(
                f"whitening {self.dims}-dim vectors needs more than {self.dims} texts, "
                f"got {self.count}"
            )
        return Whitening.from_moments(self.mean(), self.covariance(), k=k, eps=eps)


@dataclass(frozen=True)
class Whitening:
    """An affine map to (approximately) isotropic vectors; identity when `mu` is None."""

    dims_in: int
    mu: FloatArray | None = None
    w: FloatArray | None = None

    @classmethod
    def identity(cls, dims: int) -> Whitening:
        """The transform that changes nothing (no whitening corpus given)."""
        return cls(dims_in=dims)

    @classmethod
    def from_moments(
        cls, mu: np.ndarray, cov: np.ndarray, k: int | None = None, eps: float = 1e-9
    ) -> Whitening:
        """W = U Λ^(-1/2) from the SVD of the covariance, first k columns.

        `eps` (relative to the largest eigenvalue) only guards against division by zero.
        """
        d = cov.shape[0]
        if k is not None and not 1 <= k <= d:
            raise ValueError(f"whitening dim k must be in 1..{d}, got {k}")
        u, s, _ = np.linalg.svd(np.asarray(cov, dtype=np.float64))
        w = u @ np.diag(1.0 / np.sqrt(s + eps * max(float(s.max()), 1e-12)))
        if k is not None:
            w = w[:, :k]
        return cls(
            dims_in=d,
            mu=np.asarray(mu, dtype=np.float32),
            w=np.ascontiguousarray(w, dtype=np.float32),
        )

    @property
    def fitted(self) -> bool:
        """False for the identity transform."""
        return self.w is not None

    @property
    def dims_out(self) -> int:
        """Dimension of whitened vectors (k)."""
        return self.dims_in if self.w is None else int(self.w.shape[1])

    def apply(self, x: FloatArray, normalize: bool = True, dims: int | None = None) -> FloatArray:
        """Whiten rows of x; keep the first `dims` components; L2-normalise if asked.

        Components come ordered by variance, so keeping a prefix equals a smaller k cut.
        """
        if x.ndim != 2 or x.shape[1] != self.dims_in:
            raise ValueError(f"expected vectors of {self.dims_in} dims, got shape {x.shape}")
        if self.w is None or self.mu is None:
            y: FloatArray = x if dims is None else x[:, :dims]
        else:
            w = self.w if dims is None else self.w[:, :dims]
            y = np.asarray((x - self.mu) @ w, dtype=np.float32)
        return l2_normalize(y) if normalize else y

    def save(self, path: Path) -> None:
        """Write the arrays to an npz file (no pickles)."""
        arrays: dict[str, np.ndarray] = {"dims_in": np.array(self.dims_in, dtype=np.int64)}
        if self.mu is not None and self.w is not None:
            arrays["mu"] = self.mu
            arrays["w"] = self.w
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> Whitening:
        """Read a transform written by `save`; refuses pickled objects."""
        with np.load(path, allow_pickle=False) as data:
            dims_in = int(data["dims_in"])
            if "w" not in data:
                return cls.identity(dims_in)
            mu = np.asarray(data["mu"], dtype=np.float32)
            w = np.asarray(data["w"], dtype=np.float32)
        if mu.shape != (dims_in,) or w.ndim != 2 or w.shape[0] != dims_in:
            raise ValueError(f"inconsistent whitening arrays: mu {mu.shape}, W {w.shape}")
        return cls(dims_in=dims_in, mu=mu, w=w)
