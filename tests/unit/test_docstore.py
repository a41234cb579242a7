"""The SQLite document store: sequence numbers, the removal log, isolation, filters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.errors import NotFoundError, ValidationError
from service.runtime.store.base import Document
from service.runtime.store.docstore import DocStore


def vec(*values: float) -> np.ndarray:
    return np.array([values], dtype=np.float32)


@pytest.fixture
def store(tmp_path: Path) -> DocStore:
    return DocStore(tmp_path / "store.sqlite3")


def put(store: DocStore, *docs: Document) -> None:
    txn = store.begin()
    txn.upsert(docs, np.concatenate([vec(i, i) for i in range(len(docs))]))
    txn.commit()


def test_every_write_takes_new_sequence_numbers_and_logs_what_it_replaced(
    store: DocStore,
) -> None:
    put(store, Document("a", "first"), Document("b", "second"))
    assert (store.seq, store.count) == (2, 2)
    put(store, Document("a", "first, again", {"v": 2}))
    assert (store.seq, store.count) == (3, 2)
    txn = store.begin()
    assert txn.delete("b") and not txn.delete("nope")
    txn.commit()
    assert (store.seq, store.count) == (4, 1)
    with store.read() as r:
        assert r.get("a") == Document("a", "first, again", {"v": 2})
        assert r.get("b") is None
        assert r.removed_since(0).tolist() == [1, 2]  # a's first version, then b
        assert r.removed_since(3).tolist() == [2]
        seqs, vectors = next(r.vectors())
        assert seqs.tolist() == [3] and vectors.shape == (1, 2)
        assert list(r.vectors(after=3)) == []


def test_a_rolled_back_transaction_leaves_nothing(store: DocStore) -> None:
    put(store, Document("a", "kept"))
    txn = store.begin()
    txn.upsert([Document("b", "new")], vec(1, 1))
    with store.read() as r:  # readers never see uncommitted rows
        assert r.get("b") is None and r.seq() == 1
    with pytest.raises(ValidationError, match="'b' appears twice"):
        txn.upsert([Document("b", "again")], vec(2, 2))
    txn.rollback()
    txn.rollback()  # harmless twice
    assert (store.seq, store.count) == (1, 1)
    with store.read() as r:
        assert r.get("b") is None and r.count() == 1
    put(store, Document("b", "now"))  # the next transaction works
    assert store.seq == 2


def test_duplicate_ids_in_one_batch_are_refused(store: DocStore) -> None:
    txn = store.begin()
    with pytest.raises(ValidationError, match="appears twice"):
        txn.upsert([Document("x", "1"), Document("x", "2")], np.zeros((2, 2), np.float32))
    txn.rollback()
    assert store.count == 0


def test_committed_data_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    first = DocStore(path)
    put(first, Document("a", "text", {"k": [1, 2]}))
    uncommitted = first.begin()
    uncommitted.upsert([Document("b", "lost")], vec(0, 0))
    # No close, no commit: as after a crash.
    second = DocStore(path)
    assert (second.seq, second.count) == (1, 1)
    with second.read() as r:
        assert r.get("a") == Document("a", "text", {"k": [1, 2]})
        assert r.get("b") is None


def test_filters_compare_json_types(store: DocStore) -> None:
    docs = [
        Document("t", "x", {"v": True, "g": "a"}),
        Document("i", "x", {"v": 1, "g": "a"}),
        Document("f", "x", {"v": 1.0, "g": "b"}),
        Document("s", "x", {"v": "1"}),
        Document("n", "x", {"v": None}),
        Document("none", "x", {}),
    ]
    txn = store.begin()
    txn.upsert(docs, np.zeros((len(docs), 2), np.float32))
    txn.commit()
    all_seqs = list(range(1, 7))

    def ids(**where: object) -> set[str]:
        with store.read() as r:
            return {d.id for d in r.fetch(all_seqs, where).values()}  # type: ignore[arg-type]

    assert ids(v=True) == {"t"}
    assert ids(v=False) == set()
    assert ids(v=1) == {"i", "f"}
    assert ids(v="1") == {"s"}
    assert ids(v=None) == {"n"}
    assert ids(v=1, g="a") == {"i"}
    assert ids() == {d.id for d in docs}
    with store.read() as r:
        assert [s.tolist() for s, _ in r.vectors(where={"g": "b"})] == [[3]]


def test_a_closed_store_says_so(store: DocStore) -> None:
    store.close()
    with pytest.raises(NotFoundError), store.read():
        pass


def test_samples_are_reproducible(store: DocStore) -> None:
    txn = store.begin()
    txn.upsert(
        [Document(f"d{i}", "x") for i in range(50)],
        np.arange(100, dtype=np.float32).reshape(50, 2),
    )
    txn.commit()
    with store.read() as r:
        everything = r.sample(80)
        some, again = r.sample(10), r.sample(10)
    assert everything is not None and np.array_equal(everything[:, 0], np.arange(0, 100, 2))
    assert some is not None and again is not None and np.array_equal(some, again)
    assert some.shape == (10, 2) and len(set(some[:, 0].tolist())) == 10
