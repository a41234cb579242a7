"""The encoder in three stages: tokenize (pre) -> ONNX session (core) -> pooled vectors (post).

The ONNX graph already pools (cls, pooler, mean, first_last_avg), so `infer` returns pooled,
raw vectors; whitening and normalisation happen in the engine. `plan_batches` is the one
batching rule used both online (the dynamic batcher) and offline (fitting, evaluation).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from service.runtime.onnx_session import OnnxSession
from service.runtime.types import FloatArray, IntArray


@dataclass(frozen=True, slots=True)
class Tokenized:
    """One input's token ids (special tokens included) and whether they were cut to fit.

    `type_ids` are the segment ids of a pair read jointly (0 for a, 1 for b); None means all
    zeros, as for a single text.
    """

    ids: Sequence[int]
    truncated: bool = False
    type_ids: Sequence[int] | None = None

    def __len__(self) -> int:
        return len(self.ids)


class EncoderCore(Protocol):
    """What the engine needs from an encoder; the ONNX encoder and test fakes implement it."""

    @property
    def outputs(self) -> tuple[str, ...]: ...

    @property
    def dims(self) -> int: ...

    @property
    def max_length(self) -> int: ...

    @property
    def vocab_size(self) -> int:
        """Token ids run from 0 to vocab_size - 1."""
        ...

    def tokenize(self, texts: Sequence[str]) -> list[Tokenized]:
        """Token ids of each text, cut to `max_length` (flagged `truncated`)."""
        ...

    def from_ids(self, ids: Sequence[Sequence[int]]) -> list[Tokenized]:
        """Texts given as token ids (without special tokens): the special tokens added as
        `tokenize` adds them, cut to `max_length` (flagged `truncated`)."""
        ...

    def infer(self, batch: Sequence[Tokenized]) -> dict[str, FloatArray]:
        """Pooled vectors (len(batch), dims) for each output name."""
        ...


class WrappedCore:
    """An `EncoderCore` that passes everything to another one: the base of wrappers that
    change one step (a prompt before tokenizing, a cache around inference)."""

    def __init__(self, core: EncoderCore) -> None:
        self._core = core

    @property
    def outputs(self) -> tuple[str, ...]:
        return self._core.outputs

    @property
    def dims(self) -> int:
        return self._core.dims

    @property
    def max_length(self) -> int:
        return self._core.max_length

    @property
    def vocab_size(self) -> int:
        return self._core.vocab_size

    def tokenize(self, texts: Sequence[str]) -> list[Tokenized]:
        return self._core.tokenize(texts)

    def from_ids(self, ids: Sequence[Sequence[int]]) -> list[Tokenized]:
        return self._core.from_ids(ids)

    def infer(self, batch: Sequence[Tokenized]) -> dict[str, FloatArray]:
        return self._core.infer(batch)


BATCH_OVERHEAD_TOKENS = 16
"""What one more session run costs, in padded tokens (measured on CPU: ~1.5 ms of fixed cost
per run against ~0.12 ms per token for a 6x384 BERT)."""


def plan_batches(
    lengths: Sequence[int],
    max_tokens: int,
    max_size: int,
    overhead_tokens: int = BATCH_OVERHEAD_TOKENS,
) -> list[list[int]]:
    """Group item indices into batches that waste the least work.

    Items are sorted by length; each batch pads to its longest item, costs
    `longest * count + overhead_tokens`, and holds at most `max_size` items and
    `longest * count <= max_tokens` padded tokens (an item longer than the budget still gets a
    batch of its own). On sorted items the cheapest split into contiguous groups is found
    exactly by dynamic programming: mixing a long text into a batch of short ones can cost
    more than a run of its own, and a batch of one costs more than joining a neighbour.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sizes = [lengths[i] for i in order]
    n = len(sizes)
    best = [0] + [float("inf")] * n  # best[j]: cheapest plan for the first j items
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = sizes[j - 1]  # sorted: the last item of a group is its longest
        for count in range(1, min(max_size, j) + 1):
            if count > 1 and longest * count > max_tokens:
                break
            cost = best[j - count] + longest * count + overhead_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, j - count
    batches: list[list[int]] = []
    j = n
    while j > 0:
        batches.append(order[cut[j] : j])
        j = cut[j]
    batches.reverse()
    return batches


def wrap_ids(
    ids: Sequence[Sequence[int]], prefix: Sequence[int], suffix: Sequence[int], max_length: int
) -> list[Tokenized]:
    """Each id list between the special tokens, its middle cut so the whole fits
    `max_length` (flagged `truncated`)."""
    room = max(0, max_length - len(prefix) - len(suffix))
    return [Tokenized([*prefix, *row[:room], *suffix], len(row) > room) for row in ids]


def pad_batch(batch: Sequence[Tokenized], pad_id: int = 0) -> tuple[IntArray, IntArray]:
    """Ids and attention mask of a batch, padded to its longest item."""
    longest = max(len(t) for t in batch)
    ids = np.full((len(batch), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), longest), dtype=np.int64)
    for row, tok in enumerate(batch):
        ids[row, : len(tok)] = tok.ids
        mask[row, : len(tok)] = 1
    return ids, mask


def pad_type_ids(batch: Sequence[Tokenized]) -> IntArray:
    """Segment ids of a batch padded like `pad_batch` (zeros where an item has none)."""
    longest = max(len(t) for t in batch)
    types = np.zeros((len(batch), longest), dtype=np.int64)
    for row, tok in enumerate(batch):
        if tok.type_ids is not None:
            types[row, : len(tok)] = tok.type_ids
    return types


def encode_texts(
    core: EncoderCore,
    texts: Sequence[str],
    max_tokens: int = 8192,
    max_size: int = 64,
) -> dict[str, FloatArray]:
    """Pooled vectors of all texts in their given order, for offline use (no batcher)."""
    tokens = core.tokenize(texts)
    out = {name: np.empty((len(texts), core.dims), dtype=np.float32) for name in core.outputs}
    for batch in plan_batches([len(t) for t in tokens], max_tokens, max_size):
        result = core.infer([tokens[i] for i in batch])
        for name in core.outputs:
            out[name][batch] = result[name]
    return out


def encode_stream(
    core: EncoderCore,
    texts: Iterable[str],
    chunk: int = 2048,
    max_tokens: int = 8192,
    max_size: int = 64,
) -> Iterator[tuple[list[str], dict[str, FloatArray]]]:
    """Encode an iterable of any length chunk by chunk, never holding it whole."""
    buf: list[str] = []
    for text in texts:
        buf.append(text)
        if len(buf) >= chunk:
            yield buf, encode_texts(core, buf, max_tokens, max_size)
            buf = []
    if buf:
        yield buf, encode_texts(core, buf, max_tokens, max_size)


class OnnxEncoder:
    """A BERT-family encoder exported to ONNX, run by ONNX Runtime on the CPU.

    The tokenizer is the Rust `tokenizers` one from the bundle's tokenizer.json; texts are
    padded only to the longest in each batch.
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
    ) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length)
        self._max_length = max_length
        self._pad_id = pad_id

        self._session = OnnxSession(model_path, threads, cpu_arena, spin)
        # The special tokens `tokenize` puts around a text, for texts given as ids.
        probe = self._tokenizer.encode("a", add_special_tokens=True)
        plain = [i for i, special in enumerate(probe.special_tokens_mask) if not special]
        self._prefix = list(probe.ids[: plain[0]]) if plain else []
        self._suffix = list(probe.ids[plain[-1] + 1 :]) if plain else []
        self._vocab_size = int(self._tokenizer.get_vocab_size(with_added_tokens=True))
        self._outputs = tuple(o.name for o in self._session.outputs())
        dims = {o.shape[-1] for o in self._session.outputs()}
        if len(dims) != 1 or not isinstance(next(iter(dims)), int):
            raise ValueError(f"ONNX outputs must share one static last dim, got {dims}")
        self._dims = int(next(iter(dims)))

    @property
    def outputs(self) -> tuple[str, ...]:
        return self._outputs

    @property
    def dims(self) -> int:
        return self._dims

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def tokenize(self, texts: Sequence[str]) -> list[Tokenized]:
        """Batch-tokenize in Rust; truncation flagged per text."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        return [Tokenized(e.ids, bool(e.overflowing)) for e in encodings]

    def from_ids(self, ids: Sequence[Sequence[int]]) -> list[Tokenized]:
        """Token ids wrapped in the tokenizer's special tokens, cut to `max_length`."""
        return wrap_ids(ids, self._prefix, self._suffix, self._max_length)

    def infer(self, batch: Sequence[Tokenized]) -> dict[str, FloatArray]:
        """Pad to the longest in the batch and run the session."""
        ids, mask = pad_batch(batch, self._pad_id)
        types = pad_type_ids(batch) if self._session.takes_type_ids else None
        results = self._session.run(self._outputs, ids, mask, types)
        return dict(zip(self._outputs, results, strict=True))
