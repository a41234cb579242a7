"""Imported vectors' decoding and the files `simsvc index` reads them from."""

from __future__ import annotations

import asyncio
import base64
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
import pytest

from service.cli.sources import compact_embedding, count_records, parquet_lines, records
from service.errors import ValidationError
from service.runtime.imported import EmbeddingError, decode_embedding, encode_base64, raw_vectors
from service.runtime.store.base import Document
from service.runtime.types import FloatArray


def test_base64_and_lists_decode_to_the_same_float32() -> None:
    vector = np.random.default_rng(1).standard_normal(8).astype(np.float32)
    as_b64 = decode_embedding(encode_base64(vector), 8)
    as_list = decode_embedding(vector.astype(np.float64).tolist(), 8)
    assert as_b64.dtype == as_list.dtype == np.float32
    assert np.array_equal(as_b64, vector) and np.array_equal(as_list, vector)
    # Little-endian whatever the machine: the bytes are OpenAI's.
    little = base64.b64encode(struct.pack("<8f", *vector.tolist())).decode()
    assert np.array_equal(decode_embedding(little, 8), vector)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ([1.0, 2.0], "has 2 dimensions; the collection's model yields 3"),
        ([[1.0, 2.0, 3.0]], "flat list"),
        ([1.0, float("nan"), 0.0], "component 1 is nan"),
        ([1.0, 0.0, -1e39], "component 2 is -inf"),
        ("AAAAA", "not valid base64"),
        (base64.b64encode(b"\0" * 10).decode(), "10 bytes"),
    ],
)
def test_bad_vectors_say_why(value: Sequence[float] | str, says: str) -> None:
    with pytest.raises(EmbeddingError, match="embedding") as info:
        decode_embedding(value, 3)
    assert says in str(info.value)


def test_only_the_documents_without_a_vector_are_encoded() -> None:
    given = np.arange(3, dtype=np.float32)
    sent: list[list[str]] = []

    async def encode(texts: Sequence[str]) -> FloatArray:
        sent.append(list(texts))
        return np.full((len(texts), 3), 7.0, dtype=np.float32)

    docs = [Document("a", "x", {}, given), Document("b", "y"), Document("c", "z", {}, given)]
    raw = asyncio.run(raw_vectors(docs, 3, encode))
    assert sent == [["y"]] and np.array_equal(raw[1], [7, 7, 7])
    assert np.array_equal(raw[0], given) and np.array_equal(raw[2], given)
    asyncio.run(raw_vectors(docs[:1] + docs[2:], 3, encode))
    assert len(sent) == 1  # all imported: the encoder is never called
    with pytest.raises(ValidationError, match="document 'a'"):
        asyncio.run(raw_vectors(docs, 4, encode))


def test_compact_embedding_sends_numbers_as_base64_and_leaves_the_rest() -> None:
    doc = compact_embedding({"id": "a", "text": "t", "embedding": [1, 0.5, -2.0]})
    assert np.array_equal(decode_embedding(doc["embedding"], 3), [1, 0.5, -2])
    for odd in (["1"], [True, 1.0], "AAAAAA==", None):
        assert compact_embedding({"embedding": odd}) == {"embedding": odd}


def test_parquet_rows_become_ndjson_lines(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "id": [1, 2, 3],
            "text": ["a", "b", "c"],
            "metadata": pa.array([{"k": 1}, None, {"k": 3}], pa.struct([("k", pa.int64())])),
            "embedding": pa.array([[1.0, 2.0], None, [3.0, 4.5]], pa.list_(pa.float64())),
            "ignored": [0, 0, 0],
        }
    )
    path = tmp_path / "docs.parquet"
    pq.write_table(table, path, row_group_size=2)
    docs = [orjson.loads(line) for line in records(path)]
    assert count_records(path) == 3 and list(parquet_lines(path, rows=1)) == list(records(path))
    assert [d["id"] for d in docs] == ["1", "2", "3"]
    assert docs[0]["metadata"] == {"k": 1} and docs[1]["metadata"] == {}
    assert "embedding" not in docs[1]
    assert np.array_equal(decode_embedding(docs[2]["embedding"], 2), [3.0, 4.5])

    pq.write_table(pa.table({"id": ["x"], "body": ["no text column"]}), path)
    with pytest.raises(ValueError, match=r"\['text'\] are missing"):
        list(records(path))


def test_without_pyarrow_the_message_says_what_to_install(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['pyarrow'] = None; sys.modules['pyarrow.parquet'] = None\n"
        "from pathlib import Path\nfrom service.cli.sources import count_records\n"
        "try:\n    count_records(Path('x.parquet'))\nexcept ImportError as exc:\n    print(exc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "simsvc[parquet]" in out.stdout, out.stderr


def test_the_server_never_imports_pyarrow() -> None:
    code = "import sys, service.main; print('pyarrow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
