"""The files `simsvc index` sends, read as NDJSON lines: JSONL as it is, Parquet row by row.

A Parquet file holds `id`, `text`, optional `metadata` (a JSON string, a struct or a map) and
optional `embedding` (a list<float> or fixed_size_list column: each row's raw vector for the
collection's model). Rows become the same JSON objects a JSONL line holds, so resuming, batching
and error reports are one path for both. Imported vectors travel as base64 of little-endian
float32 (a quarter of the bytes of a float list, and parsed by the server without a loop).

pyarrow is imported only here, only for Parquet: the server never needs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from service.runtime.imported import encode_base64

PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
PARQUET_COLUMNS = ("id", "text", "metadata", "embedding")


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() in PARQUET_SUFFIXES


def _pyarrow() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(
            "reading Parquet needs pyarrow: pip install 'simsvc[parquet]' (or pyarrow>=15), "
            "or convert the file to JSONL"
        ) from exc
    return pq


def count_records(path: Path) -> int:
    """Lines of a JSONL file, rows of a Parquet file (from its footer)."""
    if is_parquet(path):
        return int(_pyarrow().ParquetFile(path).metadata.num_rows)
    with open(path, "rb") as fh:
        n = 0
        last = b"\n"
        while block := fh.read(1 << 20):
            n += block.count(b"\n")
            last = block[-1:]
        return n + (last != b"\n")


def records(path: Path) -> Iterator[bytes]:
    """The file's records as NDJSON lines, from the top."""
    if is_parquet(path):
        yield from parquet_lines(path)
        return
    with open(path, "rb") as fh:
        yield from fh


def compact_embedding(doc: dict[str, Any]) -> dict[str, Any]:
    """A document whose embedding is a list of numbers, with it as base64 float32 instead
    (what the server would make of it: the same float32 values). Anything else is sent as
    it is, for the server to judge."""
    emb = doc.get("embedding")
    if isinstance(emb, list) and all(type(x) is float or type(x) is int for x in emb):
        with np.errstate(over="ignore"):
            vector = np.asarray(emb, dtype=np.float32)
        return {**doc, "embedding": encode_base64(vector)}
    return doc


def _metadata(value: Any) -> Any:
    if value is None:
        return {}
    if isinstance(value, str | bytes):
        return orjson.loads(value)
    if isinstance(value, list):  # a map column: (key, value) pairs
        return dict(value)
    return value


def _vectors(column: Any) -> list[str | None]:
    """Each row's vector as base64 float32 (None where the row has none), column-wise."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and not (
        pa.types.is_fixed_size_list(kind)
    ):
        raise ValueError(f"the embedding column must be a list of floats, not {kind}")
    lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)
    values = column.flatten().to_numpy(zero_copy_only=False)
    with np.errstate(over="ignore"):
        flat = np.ascontiguousarray(values, dtype="<f4")
    nulls = column.is_null().to_numpy(zero_copy_only=False)
    out: list[str | None] = []
    start = 0
    for n, null in zip(lengths.tolist(), nulls.tolist(), strict=True):
        out.append(None if null else encode_base64(flat[start : start + n]))
        start += n
    return out


def parquet_lines(path: Path, rows: int = 4096) -> Iterator[bytes]:
    """A Parquet file's rows as NDJSON lines, `rows` at a time in memory."""
    pq = _pyarrow()
    file = pq.ParquetFile(path)
    names = set(file.schema_arrow.names)
    missing = {"id", "text"} - names
    if missing:
        raise ValueError(f"{path}: Parquet columns {sorted(missing)} are missing (id, text)")
    columns = [c for c in PARQUET_COLUMNS if c in names]
    for batch in file.iter_batches(batch_size=rows, columns=columns):
        ids = batch.column("id").to_pylist()
        texts = batch.column("text").to_pylist()
        meta = batch.column("metadata").to_pylist() if "metadata" in names else None
        vectors = _vectors(batch.column("embedding")) if "embedding" in names else None
        for i, doc_id in enumerate(ids):
            doc: dict[str, Any] = {"id": None if doc_id is None else str(doc_id)}
            doc["text"] = texts[i]
            if meta is not None:
                doc["metadata"] = _metadata(meta[i])
            if vectors is not None and vectors[i] is not None:
                doc["embedding"] = vectors[i]
            yield orjson.dumps(doc) + b"\n"
