"""Collections without HTTP: recovery after a crash replays the store into the snapshot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from service.metrics import Metrics
from service.runtime.collections import Collections
from service.runtime.search import SearchRequest
from service.runtime.store.base import Document
from service.runtime.store.docstore import DocStore
from service.runtime.store.local import LocalStore
from service.runtime.store.local_collection import LocalCollection, LocalOptions
from service.settings import Settings
from tests.api.conftest import fake_factory
from tests.builders import sentences


async def batches(docs: Sequence[Document], size: int = 4) -> AsyncIterator[Sequence[Document]]:
    for start in range(0, len(docs), size):
        yield docs[start : start + size]


def test_a_crash_after_acknowledged_writes_loses_nothing_and_indexes_nothing_twice(
    tmp_path: Path,
) -> None:
    root = tmp_path / "collections"
    options = LocalOptions(snapshot_every=8)
    docs = [Document(f"d{i}", t, {"i": i}) for i, t in enumerate(sentences(13, seed=3))]
    updated = [Document("d0", "the red bird sings a song today", {"i": 100})]
    engine = fake_factory()(Settings(threads=1), Metrics())
    engine.start()

    async def before_the_crash() -> None:
        colls = Collections(LocalStore(root, options))
        await colls.open()
        assert await colls.upsert("c", engine, batches(docs[:10])) == (10, 10)  # snapshot
        await colls.upsert("c", engine, batches(docs[10:]))
        await colls.upsert("c", engine, batches(updated))
        await colls.delete_document("c", "d4")
        # The process dies here: no close, the last snapshot is 6 changes old.

    async def after_the_restart() -> None:
        store = LocalStore(root, options)
        colls = Collections(store)
        await colls.open()
        coll = store.collection("c")
        assert coll.view is not None
        assert coll.store.count == 12 and coll.view.index.ntotal == 12
        assert coll.view.seq == coll.store.seq == 15
        for doc in [*docs[1:4], *docs[5:], *updated]:
            hits = await colls.search("c", engine, doc.text, 12)
            assert [h.document.id for h in hits].count(doc.id) == 1
            assert hits[0].document == doc
        assert "d4" not in {h.document.id for h in await colls.search("c", engine, "x", 12)}
        await colls.close()

    try:
        asyncio.run(before_the_crash())
        with DocStore(root / "c" / "store.sqlite3").read() as r:
            assert r.meta("snapshot")["seq"] == 10 and r.seq() == 15
        asyncio.run(after_the_restart())
    finally:
        engine.stop()
    with DocStore(root / "c" / "store.sqlite3").read() as r:
        assert r.meta("snapshot")["seq"] == 15  # recovery wrote a fresh snapshot
        assert r.removed_since(0).tolist() == []  # and pruned the log it covers


class CountingStore(LocalStore):
    """A local store that counts how often a collection is looked up by name."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.lookups = 0

    def collection(self, name: str) -> LocalCollection:
        self.lookups += 1
        return super().collection(name)


def test_a_search_looks_its_collection_up_once(tmp_path: Path) -> None:
    docs = [Document(f"d{i}", t) for i, t in enumerate(sentences(8, seed=5))]
    engine = fake_factory()(Settings(threads=1), Metrics())
    engine.start()

    async def run() -> None:
        store = CountingStore(tmp_path / "collections")
        colls = Collections(store)
        await colls.open()
        await colls.upsert("c", engine, batches(docs))
        for mode in ("dense", "lexical", "hybrid"):
            store.lookups = 0
            result = await colls.find("c", engine, SearchRequest(docs[2].text, 3, mode=mode))
            assert result.hits[0].document.id == "d2"
            assert store.lookups == 1, mode
        await colls.close()

    try:
        asyncio.run(run())
    finally:
        engine.stop()
