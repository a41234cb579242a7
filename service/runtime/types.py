"""Array aliases shared by the runtime."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

POOLINGS: tuple[str, ...] = ("cls", "pooler", "mean", "first_last_avg")
"""The pooled outputs every exported graph yields, by name."""
