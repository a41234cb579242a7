"""Array aliases shared by the runtime."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

POOLINGS: tuple[str, ...] = ("cls", "pooler", "mean", "first_last_avg")
"""The pooled outputs every exported graph yields, by name."""


@dataclass(frozen=True)
class Timings:
    """Seconds spent per stage for one request."""

    tokenize: float = 0.0
    queue: float = 0.0
    inference: float = 0.0
