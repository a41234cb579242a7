"""Deterministic fake encoders for API tests (no ONNX, no model files): a bi-encoder and a
cross-encoder.

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
        self.texts: list[str] = []
        """Every text tokenized, in order, as the encoder read it (prompt included)."""
        self._lock = threading.Lock()
        # A test can hold batches at the encoder (set `gate` to an unset Event) and learn
        # when one arrived (`entered`), to see the queue fill without relying on timing.
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

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
        with self._lock:
            self.texts.extend(texts)
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
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(timeout=60)
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        base = np.stack([sum(self._vector(t) for t in tok.ids) for tok in batch]).astype(np.float32)
        # Each output differs, and no row depends on what else is in the batch.
        return {name: base + np.float32(i) for i, name in enumerate(POOLINGS)}


class FakeCrossEncoder:
    """A word-overlap cross-encoder implementing `CrossCore`: the logit of a pair grows with
    the share of words its two texts have in common (6 * Jaccard - 3), whatever else is in
    the batch. With two labels it yields (-logit / 2, logit / 2), so the logit difference is
    the same score. Records batch sizes; can be slowed down or told to fail."""

    def __init__(self, num_labels: int = 1, max_length: int = 32, delay: float = 0.0) -> None:
        self._num_labels = num_labels
        self._max_length = max_length
        self.delay = delay
        self.fail: Exception | None = None
        self.batches: list[int] = []
        self.pairs: list[tuple[str, str | None]] = []
        """Every pair tokenized, in order, as the cross-encoder read it."""
        self._lock = threading.Lock()

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def num_labels(self) -> int:
        return self._num_labels

    @staticmethod
    def _ids(text: str) -> list[int]:
        return [1000 + zlib.crc32(w.lower().encode()) % 30000 for w in text.split()]

    def tokenize_pairs(
        self, pairs: Sequence[tuple[str, str | None]], direction: str = "right"
    ) -> list[Tokenized]:
        with self._lock:
            self.pairs.extend(pairs)
        out = []
        for a, b in pairs:
            ia, ib = self._ids(a), self._ids(b or "")
            ids = [101, *ia, 102] + ([*ib, 102] if b is not None else [])
            types = [0] * (len(ia) + 2) + [1] * (len(ids) - len(ia) - 2)
            truncated = len(ids) > self._max_length
            if truncated:
                keep = slice(len(ids) - self._max_length, None) if direction == "left" else None
                ids = ids[keep] if keep else ids[: self._max_length]
                types = types[keep] if keep else types[: self._max_length]
            out.append(Tokenized(ids, truncated, types))
        return out

    def infer(self, batch: Sequence[Tokenized]) -> dict[str, FloatArray]:
        with self._lock:
            self.batches.append(len(batch))
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        logits = []
        for tok in batch:
            a = {i for i, t in zip(tok.ids, tok.type_ids or [], strict=True) if t == 0} - {101, 102}
            b = {i for i, t in zip(tok.ids, tok.type_ids or [], strict=True) if t == 1} - {102}
            share = len(a & b) / len(a | b) if a | b else 0.0
            logits.append(6.0 * share - 3.0)
        x = np.asarray(logits, dtype=np.float32)[:, None]
        return {"logits": x if self._num_labels == 1 else np.concatenate([-x / 2, x / 2], axis=1)}
