"""A deterministic fake encoder for API tests (no ONNX, no model files).

Texts sharing words get similar vectors, so similarity scores behave sensibly. It records
the batches it saw, can be slowed down, and can be told to fail.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Sequence

import numpy as np

from service.runtime.encoder import Tokenized, wrap_ids
from service.runtime.types import POOLINGS, FloatArray


class FakeEncoder:
    """Bag-of-words random-projection encoder implementing `EncoderCore`."""

    def __init__(self, dims: int = 16, max_length: int = 32, delay: float = 0.0) -> None:
        self._dims = dims
        self._max_length = max_length
        self.delay = delay
        self.fail: Exception | None = None
        self.batches: list[int] = []
        self._lock = threading.Lock()

    @property
    def outputs(self) -> tuple[str, ...]:
        return POOLINGS

    @property
    def dims(self) -> int:
        return self._dims

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def vocab_size(self) -> int:
        return 31_000

    def from_ids(self, ids: Sequence[Sequence[int]]) -> list[Tokenized]:
        return wrap_ids(ids, [101], [102], self._max_length)

    def tokenize(self, texts: Sequence[str]) -> list[Tokenized]:
        out = []
        for text in texts:
            ids = [101] + [1000 + zlib.crc32(w.lower().encode()) % 30000 for w in text.split()]
            ids.append(102)
            truncated = len(ids) > self._max_length
            if truncated:
                ids = [*ids[: self._max_length - 1], 102]
            out.append(Tokenized(ids, truncated))
        return out

    def _vector(self, token: int) -> FloatArray:
        return np.random.default_rng(token).standard_normal(self._dims).astype(np.float32)

    def infer(self, batch: Sequence[Tokenized]) -> dict[str, FloatArray]:
        with self._lock:
            self.batches.append(len(batch))
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        base = np.stack([sum(self._vector(t) for t in tok.ids) for tok in batch]).astype(np.float32)
        # Each output differs, and no row depends on what else is in the batch.
        return {name: base + np.float32(i) for i, name in enumerate(POOLINGS)}
