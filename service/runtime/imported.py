"""Imported vectors: documents that arrive with their raw encoder-space vector.

A client moving an existing corpus already has its vectors; re-encoding a million texts takes
hours on a few cores. A document may therefore carry `embedding`: the raw vector the
collection's bundle would produce for its text (before whitening), as a list of floats or as
base64 of little-endian float32 (OpenAI's `encoding_format: "base64"`). It is stored and
whitened exactly like an encoded one, and its text is not encoded (it is still stored and
indexed lexically). Only the documents without one go through the encoder queue.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from service.errors import ValidationError
from service.runtime.store.base import Document
from service.runtime.types import FloatArray

LITTLE_F32 = np.dtype("<f4")


class EmbeddingError(ValueError):
    """A vector that cannot be imported; the message says why, for the client."""


def decode_embedding(value: Sequence[float] | str | bytes, dims: int) -> FloatArray:
    """A raw vector from a float list or base64 little-endian float32, as float32 of `dims`
    finite components (a float64 beyond float32's range would become infinite: refused)."""
    if isinstance(value, str | bytes):
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise EmbeddingError(f"embedding is not valid base64 ({exc})") from exc
        if len(data) % 4:
            raise EmbeddingError(
                f"embedding holds {len(data)} bytes in base64, not a whole number of float32s"
            )
        vector = np.frombuffer(data, dtype=LITTLE_F32).astype(np.float32)
    else:
        with np.errstate(over="ignore"):
            vector = np.asarray(value, dtype=np.float32)
        if vector.ndim != 1:
            raise EmbeddingError("embedding must be a flat list of numbers")
    if vector.shape[0] != dims:
        raise EmbeddingError(
            f"embedding has {vector.shape[0]} dimensions; the collection's model yields {dims}"
        )
    finite = np.isfinite(vector)
    if not finite.all():
        at = int(np.argmin(finite))
        raise EmbeddingError(
            f"embedding component {at} is {vector[at]} (NaN and infinity cannot be indexed)"
        )
    return vector


def encode_base64(vector: FloatArray) -> str:
    """A raw vector as base64 of little-endian float32 (what `decode_embedding` reads)."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype=LITTLE_F32).tobytes()).decode()


async def raw_vectors(
    docs: Sequence[Document],
    dims: int,
    encode: Callable[[Sequence[str]], Awaitable[FloatArray]],
) -> FloatArray:
    """The raw vectors of a batch: imported ones as given, the others encoded (only those
    texts are sent to the encoder; a batch of imported vectors never waits for it)."""
    out = np.empty((len(docs), dims), dtype=np.float32)
    missing: list[int] = []
    for i, doc in enumerate(docs):
        if doc.embedding is None:
            missing.append(i)
            continue
        if doc.embedding.shape != (dims,):
            raise ValidationError(
                f"document {doc.id!r}: embedding has shape {doc.embedding.shape}; the "
                f"collection's model yields {dims} dimensions"
            )
        out[i] = doc.embedding
    if missing:
        out[missing] = await encode([docs[i].text for i in missing])
    return out
