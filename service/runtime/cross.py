"""The cross-encoder: both texts read at once (the tokenizer's pair template: BERT's
`[CLS] a [SEP] b [SEP]`, XLM-R's `<s> a </s></s> b </s>`), into one relevance logit.

A bi-encoder compares two vectors made apart; a cross-encoder lets every token of `a` attend
to every token of `b`, which scores a pair better and costs one model run per pair. The core
tokenizes pairs jointly (segment ids as the template gives them; the longer side cut first) and
runs the exported sequence classifier, whose graph returns logits only. `CrossScorer` puts
a core behind its own dynamic batcher (a second queue beside the bi-encoder's) and maps raw
scores to calibrated probabilities. onnxruntime and tokenizers only: no torch here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from service.errors import TextTooLongError
from service.runtime.batching import DynamicBatcher
from service.runtime.encoder import Tokenized, pad_batch, pad_type_ids, plan_batches
from service.runtime.head import Calibration
from service.runtime.onnx_session import OnnxSession
from service.runtime.types import Float64Array, FloatArray, Timings

LOGITS = "logits"
"""The one output of an exported cross-encoder graph: (batch, num_labels)."""

Direction = Literal["right", "left"]
PairInput = tuple[str, str | None]
"""A pair (a, b), or (a, None) for a single text (TEI's /predict takes both)."""


class CrossCore(Protocol):
    """What the scorer needs from a cross-encoder; the ONNX core and test fakes implement it."""

    @property
    def max_length(self) -> int: ...

    @property
    def num_labels(self) -> int: ...

    def tokenize_pairs(
        self, pairs: Sequence[PairInput], direction: Direction = "right"
    ) -> list[Tokenized]:
        """Joint token ids and segment ids of each pair, cut to `max_length` (flagged)."""
        ...

    def infer(self, batch: Sequence[Tokenized]) -> dict[str, FloatArray]:
        """`{"logits": (len(batch), num_labels)}`."""
        ...


def raw_scores(logits: np.ndarray) -> Float64Array:
    """One raw score per row: the logit (one label) or logit[1] - logit[0] (two labels).

    Either way sigmoid(raw) is the model's own probability (for two labels it equals
    softmax(logits)[1]), so both kinds of checkpoint serve alike.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] not in (1, 2):
        raise ValueError(f"cross-encoder logits must be (n, 1) or (n, 2), got {logits.shape}")
    return logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]


def sigmoid(x: np.ndarray) -> Float64Array:
    """The logistic function, stable for large |x|."""
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64))))


def softmax(logits: np.ndarray) -> Float64Array:
    """Row-wise softmax."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(z / z.sum(axis=1, keepdims=True))


def cross_logits(
    core: CrossCore, pairs: Sequence[PairInput], max_tokens: int = 8192, max_size: int = 32
) -> FloatArray:
    """Logits of all pairs in their given order, for offline use (no batcher)."""
    tokens = core.tokenize_pairs(pairs)
    out = np.empty((len(pairs), core.num_labels), dtype=np.float32)
    for batch in plan_batches([len(t) for t in tokens], max_tokens, max_size):
        out[batch] = core.infer([tokens[i] for i in batch])[LOGITS]
    return out


def swapped(pairs: Sequence[PairInput]) -> list[PairInput]:
    """(b, a) for each pair; a single text (b None) stays as it is."""
    return [(a, b) if b is None else (b, a) for a, b in pairs]


def pair_raw_scores(core: CrossCore, pairs: Sequence[PairInput], both_orders: bool) -> Float64Array:
    """Raw scores of pairs offline, averaged over both orders when the bundle serves them so."""
    logits = cross_logits(core, pairs)
    if both_orders:
        logits = ((logits + cross_logits(core, swapped(pairs))) / 2).astype(np.float32)
    return raw_scores(logits)


class OnnxCrossEncoder:
    """An exported `AutoModelForSequenceClassification` run by ONNX Runtime on the CPU.

    `segment_ids` is False for models whose token types are all zero (RoBERTa-like); the
    tokenizer's pair type ids are then not fed.
    """

    def __init__(
        self,
        model_path: Path,
        tokenizer_path: Path,
        max_length: int,
        pad_id: int = 0,
        threads: int = 0,
        cpu_arena: bool = True,
        spin: bool = True,
        segment_ids: bool = True,
    ) -> None:
        self._tokenizer_path = tokenizer_path
        self._tokenizers: dict[str, Any] = {}
        self._max_length = max_length
        self._pad_id = pad_id
        self._segments = segment_ids
        self._tokenizer("right")  # fails now, not on the first request, if the file is bad
        self._session = OnnxSession(model_path, threads, cpu_arena, spin, "cross-encoder")
        outputs = self._session.outputs()
        if [o.name for o in outputs] != [LOGITS] or not isinstance(outputs[0].shape[-1], int):
            raise ValueError(
                f"a cross-encoder graph has one output {LOGITS!r} with a static label axis, got "
                f"{[(o.name, o.shape) for o in outputs]}"
            )
        self._num_labels = int(outputs[0].shape[-1])

    def _tokenizer(self, direction: str) -> Any:
        from tokenizers import Tokenizer

        tok = self._tokenizers.get(direction)
        if tok is None:
            tok = Tokenizer.from_file(str(self._tokenizer_path))
            tok.no_padding()
            tok.enable_truncation(self._max_length, strategy="longest_first", direction=direction)
            self._tokenizers[direction] = tok
        return tok

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def num_labels(self) -> int:
        return self._num_labels

    @property
    def pad_id(self) -> int:
        return self._pad_id

    def tokenize_pairs(
        self, pairs: Sequence[PairInput], direction: Direction = "right"
    ) -> list[Tokenized]:
        """Batch-tokenize in Rust with the tokenizer's own pair template (its post-processor
        places the special tokens), the longer side cut first."""
        tok = self._tokenizer(direction)
        inputs = [a if b is None else (a, b) for a, b in pairs]
        encodings = tok.encode_batch(inputs, add_special_tokens=True)
        return [
            Tokenized(e.ids, bool(e.overflowing), e.type_ids if self._segments else None)
            for e in encodings
        ]

    def infer(self, batch: Sequence[Tokenized]) -> dict[str, FloatArray]:
        """Pad to the longest pair in the batch and run the session: the logits."""
        ids, mask = pad_batch(batch, self._pad_id)
        types = pad_type_ids(batch) if self._session.takes_type_ids else None
        (logits,) = self._session.run([LOGITS], ids, mask, types)
        return {LOGITS: logits}


class CrossObserver(Protocol):
    """Receives per-request cross-encoder figures (the metrics module implements it)."""

    def tokenized(self, texts: int, tokens: int, truncated: int, seconds: float) -> None: ...

    def pairs_scored(self, probabilities: np.ndarray, similar: np.ndarray) -> None: ...


class _NullObserver:
    def tokenized(self, texts: int, tokens: int, truncated: int, seconds: float) -> None:
        pass

    def pairs_scored(self, probabilities: np.ndarray, similar: np.ndarray) -> None:
        pass


@dataclass(frozen=True)
class CrossScores:
    """Per input: logits, raw score, the model's probability sigmoid(raw), the calibrated
    probability and its verdict; token count and stage timings."""

    logits: FloatArray
    raw: Float64Array
    scores: Float64Array
    probabilities: Float64Array
    similar: np.ndarray
    tokens: int
    truncated: int
    timings: Timings


class CrossScorer:
    """A cross-encoder core behind its own dynamic batcher, with its calibration."""

    def __init__(
        self,
        core: CrossCore,
        batcher: DynamicBatcher,
        *,
        model_name: str,
        calibration: Calibration | None = None,
        labels: Sequence[str] = (),
        threshold: float = 0.5,
        observer: CrossObserver | None = None,
        inline_tokenize_chars: int = 2000,
        symmetric: bool = False,
    ) -> None:
        self.core = core
        self.symmetric = symmetric
        """Pair similarity reads both orders (the bundle's calibration was fitted so)."""
        self.batcher = batcher
        self.model_name = model_name
        self.calibration = calibration or Calibration("logistic")
        self.labels = list(labels) or [f"LABEL_{i}" for i in range(core.num_labels)]
        if len(self.labels) != core.num_labels:
            raise ValueError(f"{len(self.labels)} labels for {core.num_labels} logits")
        self.threshold = threshold
        self._observer: CrossObserver = observer or _NullObserver()
        self._inline_chars = inline_tokenize_chars

    def start(self) -> None:
        self.batcher.start()

    def stop(self) -> None:
        self.batcher.stop()

    async def score(
        self,
        pairs: Sequence[PairInput],
        *,
        truncate: bool = True,
        direction: Direction = "right",
        both_orders: bool = False,
    ) -> CrossScores:
        """Score pairs through the batcher; with `truncate=False` a too-long pair is an error.

        `both_orders` reads every pair as (a, b) and as (b, a) and averages the logits, so a
        similarity is symmetric (a cross-encoder alone is not) and a little better on STS."""
        n = len(pairs)
        if both_orders:
            pairs = [*pairs, *swapped(pairs)]
        started = time.perf_counter()
        chars = sum(len(a) + len(b or "") for a, b in pairs)
        if chars <= self._inline_chars:
            tokens = self.core.tokenize_pairs(pairs, direction)
        else:
            tokens = await asyncio.to_thread(self.core.tokenize_pairs, pairs, direction)
        tokenize_seconds = time.perf_counter() - started
        truncated = sum(1 for t in tokens if t.truncated)
        count = sum(len(t) for t in tokens)
        self._observer.tokenized(len(tokens), count, truncated, tokenize_seconds)
        if truncated and not truncate:
            first = next(i for i, t in enumerate(tokens) if t.truncated) % n
            raise TextTooLongError(
                f"pair {first} is longer than the cross-encoder's {self.core.max_length} tokens "
                "and truncate is false"
            )
        result = await self.batcher.submit(tokens)
        logits = result.vectors[LOGITS]
        if both_orders:
            logits = ((logits[:n] + logits[n:]) / 2).astype(np.float32)
        raw = raw_scores(logits)
        probabilities = np.clip(self.calibration(raw), 0.0, 1.0)
        similar = probabilities >= self.threshold
        self._observer.pairs_scored(probabilities, similar)
        return CrossScores(
            logits=logits,
            raw=raw,
            scores=sigmoid(raw),
            probabilities=probabilities,
            similar=similar,
            tokens=count,
            truncated=truncated,
            timings=Timings(tokenize_seconds, result.queue_seconds, result.inference_seconds),
        )
