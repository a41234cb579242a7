"""The local store's durable half: documents, metadata, raw pooled vectors and the lexical
(BM25) index in SQLite.

The store is the source of truth; the FAISS index is a cache that can always be rebuilt
from it without re-encoding. WAL mode with `synchronous=FULL`: a committed transaction
survives `kill -9` and power loss, an uncommitted one leaves nothing behind.

Every change takes the next number of a per-collection sequence. A document's row is keyed
by the sequence number of its latest write, which is also its FAISS id, so an id is never
reused for different vectors. Replacing or deleting a document logs its old number in
`removed` with the change that removed it; the index catches up from any point by adding
rows newer than it and removing what was logged after it.

The lexical index is an FTS5 table keyed by the same sequence numbers, holding each
document's analysed terms, written in the same transaction as the document: it holds
exactly the committed documents, and FTS5's `bm25()` ranks them.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from service.errors import NotFoundError, ValidationError
from service.runtime.lexical import fts_document
from service.runtime.store.base import Document, Filter
from service.runtime.types import FloatArray, IntArray

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL,
    lex_len INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS removed (seq INTEGER PRIMARY KEY, at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS removed_at ON removed (at);
CREATE VIRTUAL TABLE IF NOT EXISTS lexical
    USING fts5(terms, tokenize = 'unicode61 remove_diacritics 0');
"""
DEFAULT_ANALYZER = "english"
_CHUNK = 500  # ids per IN (...) clause, well under SQLite's variable limit


def _filter_sql(where: Filter | None) -> tuple[str, list[Any]]:
    """SQL for metadata equality: same JSON type (numbers compare by value) and value."""
    if not where:
        return "1", []
    clauses: list[str] = []
    params: list[Any] = []
    extra: list[Any]
    for key, value in where.items():
        if value is None:
            cond, extra = "j.type = 'null'", []
        elif isinstance(value, bool):
            cond, extra = "j.type = ?", ["true" if value else "false"]
        elif isinstance(value, int | float):
            cond, extra = "j.type IN ('integer', 'real') AND j.value = ?", [value]
        elif isinstance(value, str):
            cond, extra = "j.type = 'text' AND j.value = ?", [value]
        else:
            raise ValidationError(
                f"filter value of {key!r} must be a string, number, boolean or null"
            )
        clauses.append(
            f"EXISTS (SELECT 1 FROM json_each(d.metadata) AS j WHERE j.key = ? AND {cond})"
        )
        params += [key, *extra]
    return " AND ".join(clauses), params


def _document(doc_id: str, text: str, metadata: str) -> Document:
    return Document(doc_id, text, orjson.loads(metadata))


class StoreReader:
    """Reads on one connection; inside `DocStore.read()` they all see one snapshot."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def meta(self, key: str) -> Any:
        """A meta value (JSON), or None."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else orjson.loads(row[0])

    def seq(self) -> int:
        """The number of the last committed change."""
        return int(self.meta("seq") or 0)

    def count(self) -> int:
        row = self._conn.execute("SELECT count(*) FROM documents").fetchone()
        return int(row[0])

    def get(self, doc_id: str) -> Document | None:
        row = self._conn.execute(
            "SELECT id, text, metadata FROM documents WHERE id = ?", (doc_id,)
        ).fetchone()
        return None if row is None else _document(*row)

    def fetch(self, seqs: Sequence[int], where: Filter | None = None) -> dict[int, Document]:
        """The live documents among `seqs` that match the filter, by sequence number."""
        cond, params = _filter_sql(where)
        out: dict[int, Document] = {}
        for start in range(0, len(seqs), _CHUNK):
            part = [int(s) for s in seqs[start : start + _CHUNK]]
            marks = ",".join("?" * len(part))
            rows = self._conn.execute(
                f"SELECT seq, id, text, metadata FROM documents AS d "
                f"WHERE seq IN ({marks}) AND {cond}",
                [*part, *params],
            )
            for seq, doc_id, text, metadata in rows:
                out[int(seq)] = _document(doc_id, text, metadata)
        return out

    def vectors_of(self, seqs: Sequence[int]) -> tuple[IntArray, FloatArray]:
        """The raw vectors of the live documents among `seqs` (a refine step's exact re-score
        reads them from disk rather than keeping float32 copies in memory)."""
        found: list[int] = []
        blobs: list[bytes] = []
        for start in range(0, len(seqs), _CHUNK):
            part = [int(s) for s in seqs[start : start + _CHUNK]]
            marks = ",".join("?" * len(part))
            for seq, blob in self._conn.execute(
                f"SELECT seq, vector FROM documents WHERE seq IN ({marks})", part
            ):
                found.append(int(seq))
                blobs.append(blob)
        flat = np.frombuffer(b"".join(blobs), dtype=np.float32)
        return np.array(found, dtype=np.int64), flat.reshape(len(found), -1)

    def vectors(
        self, after: int = 0, where: Filter | None = None, chunk: int = 4096
    ) -> Iterator[tuple[IntArray, FloatArray]]:
        """Sequence numbers and raw vectors of live documents newer than `after`, in chunks."""
        cond, params = _filter_sql(where)
        cursor = self._conn.execute(
            f"SELECT seq, vector FROM documents AS d WHERE seq > ? AND {cond} ORDER BY seq",
            [after, *params],
        )
        while rows := cursor.fetchmany(chunk):
            seqs = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            flat = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
            yield seqs, flat.reshape(len(rows), -1)

    def sample(self, n: int, seed: int = 0) -> FloatArray | None:
        """Raw vectors of up to n live documents, chosen by a seeded draw so that the same
        store always yields the same sample (None when there are none)."""
        seqs = [r[0] for r in self._conn.execute("SELECT seq FROM documents ORDER BY seq")]
        if not seqs:
            return None
        if len(seqs) > n:
            rows = np.sort(np.random.default_rng(seed).choice(len(seqs), n, replace=False))
            seqs = [seqs[i] for i in rows]
        blobs: list[bytes] = []
        for start in range(0, len(seqs), _CHUNK):
            part = seqs[start : start + _CHUNK]
            marks = ",".join("?" * len(part))
            blobs += [
                r[0]
                for r in self._conn.execute(
                    f"SELECT vector FROM documents WHERE seq IN ({marks}) ORDER BY seq", part
                )
            ]
        return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), -1)

    def lexical(
        self, match: str, k: int, where: Filter | None = None
    ) -> list[tuple[int, Document, float]]:
        """The k best BM25 matches of an FTS5 expression among documents matching `where`:
        (sequence number, document, score), best first (FTS5's bm25() is lower-is-better;
        the score here is its negation, higher-is-better like every other score)."""
        cond, params = _filter_sql(where)
        rows = self._conn.execute(
            f"SELECT d.seq, d.id, d.text, d.metadata, -bm25(lexical) FROM lexical "
            f"JOIN documents AS d ON d.seq = lexical.rowid "
            f"WHERE lexical MATCH ? AND {cond} ORDER BY bm25(lexical) LIMIT ?",
            [match, *params, k],
        )
        return [(int(r[0]), _document(r[1], r[2], r[3]), float(r[4])) for r in rows]

    def lexical_count(self) -> int:
        row = self._conn.execute("SELECT count(*) FROM lexical").fetchone()
        return int(row[0])

    def lex_total(self) -> int:
        """Term occurrences in the lexical index (its size, as a metric)."""
        row = self._conn.execute("SELECT coalesce(sum(lex_len), 0) FROM documents").fetchone()
        return int(row[0])

    def removed_since(self, seq: int) -> IntArray:
        """Sequence numbers replaced or deleted by changes after `seq`."""
        rows = self._conn.execute("SELECT seq FROM removed WHERE at > ?", (seq,)).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))


class WriteTxn:
    """One write transaction: all of it is committed, or none of it."""

    def __init__(self, store: DocStore) -> None:
        self._store = store
        self._conn = store._writer
        self._start = store.seq
        self.seq = store.seq
        self.count = store.count
        self.lex_total = store.lex_total
        self.done = False
        self._analyzer: str | None = None
        self._conn.execute("BEGIN IMMEDIATE")

    @property
    def analyzer(self) -> str:
        """The lexical analyser this transaction writes with."""
        return self._analyzer or self._store.analyzer

    def upsert(self, docs: Sequence[Document], vectors: FloatArray) -> None:
        """Insert or replace documents by id, each under a new sequence number.

        An id given twice in one transaction is an error (the caller rolls back).
        """
        if len(docs) != len(vectors):
            raise ValueError(f"{len(docs)} documents but {len(vectors)} vectors")
        ids = [d.id for d in docs]
        seen: set[str] = set()
        for doc_id in ids:
            if doc_id in seen:
                raise ValidationError(f"document id {doc_id!r} appears twice in one request")
            seen.add(doc_id)
        existing: dict[str, tuple[int, int]] = {}
        for start in range(0, len(ids), _CHUNK):
            part = ids[start : start + _CHUNK]
            marks = ",".join("?" * len(part))
            for doc_id, seq, lex_len in self._conn.execute(
                f"SELECT id, seq, lex_len FROM documents WHERE id IN ({marks})", part
            ):
                existing[doc_id] = (int(seq), int(lex_len))
        rows: list[tuple[int, str, str, str, bytes, int]] = []
        lexical: list[tuple[int, str]] = []
        removed: list[tuple[int, int]] = []
        for doc, vector in zip(docs, vectors, strict=True):
            self.seq += 1
            old = existing.get(doc.id)
            if old is None:
                self.count += 1
            elif old[0] > self._start:
                raise ValidationError(f"document id {doc.id!r} appears twice in one request")
            else:
                removed.append((old[0], self.seq))
                self.lex_total -= old[1]
            metadata = orjson.dumps(doc.metadata).decode()
            vec = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
            terms = fts_document(self.analyzer, doc.text)
            lex_len = terms.count(" ") + 1 if terms else 0
            self.lex_total += lex_len
            rows.append((self.seq, doc.id, doc.text, metadata, vec, lex_len))
            lexical.append((self.seq, terms))
        gone = [(s,) for s, _ in removed]
        self._conn.executemany("DELETE FROM documents WHERE seq = ?", gone)
        self._conn.executemany("DELETE FROM lexical WHERE rowid = ?", gone)
        self._conn.executemany("INSERT INTO removed (seq, at) VALUES (?, ?)", removed)
        self._conn.executemany(
            "INSERT INTO documents (seq, id, text, metadata, vector, lex_len) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        self._conn.executemany("INSERT INTO lexical (rowid, terms) VALUES (?, ?)", lexical)

    def delete(self, doc_id: str) -> bool:
        """Delete a document by id; False when there is none."""
        row = self._conn.execute(
            "SELECT seq, lex_len FROM documents WHERE id = ?", (doc_id,)
        ).fetchone()
        if row is None:
            return False
        self.seq += 1
        self.count -= 1
        self.lex_total -= int(row[1])
        self._conn.execute("DELETE FROM documents WHERE seq = ?", (row[0],))
        self._conn.execute("DELETE FROM lexical WHERE rowid = ?", (row[0],))
        self._conn.execute("INSERT INTO removed (seq, at) VALUES (?, ?)", (row[0], self.seq))
        return True

    def reindex_lexical(self, analyzer: str, chunk: int = 1000) -> int:
        """Analyse every document again into the lexical index (a new analyser, or an index
        that lost step with the documents); the documents indexed."""
        self._conn.execute("DELETE FROM lexical")
        done = 0
        self.lex_total = 0
        rows = self._conn.cursor().execute("SELECT seq, text FROM documents ORDER BY seq")
        while part := rows.fetchmany(chunk):
            analysed = [(seq, fts_document(analyzer, text)) for seq, text in part]
            lens = [(t.count(" ") + 1 if t else 0, seq) for seq, t in analysed]
            self._conn.executemany("INSERT INTO lexical (rowid, terms) VALUES (?, ?)", analysed)
            self._conn.executemany("UPDATE documents SET lex_len = ? WHERE seq = ?", lens)
            self.lex_total += sum(n for n, _ in lens)
            done += len(part)
        self.set_meta("lexical", {"analyzer": analyzer})
        self._analyzer = analyzer
        return done

    def set_meta(self, key: str, value: Any) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, orjson.dumps(value).decode()),
        )

    def prune_removed(self, upto: int) -> None:
        """Forget removals an index snapshot already reflects."""
        self._conn.execute("DELETE FROM removed WHERE at <= ?", (upto,))

    def commit(self) -> None:
        """Make the transaction durable (fsync of the WAL) before anyone is told."""
        if self.seq != self._start:
            self.set_meta("seq", self.seq)
        self._conn.execute("COMMIT")
        self.done = True
        self._store._committed(self.seq, self.count)
        self._store.lex_total = self.lex_total
        if self._analyzer is not None:
            self._store.analyzer = self._analyzer

    def rollback(self) -> None:
        """Undo everything; a no-op once committed or rolled back (safe to call twice)."""
        if not self.done:
            self.done = True
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")


class DocStore:
    """One collection's SQLite file: a writer connection and a pool of readers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._closed = False
        self._writer = self._connect()
        self._writer.execute("PRAGMA journal_mode = WAL")
        self._writer.executescript(_SCHEMA)
        columns = {r[1] for r in self._writer.execute("PRAGMA table_info(documents)")}
        if "lex_len" not in columns:  # a collection from before the lexical index
            self._writer.execute(
                "ALTER TABLE documents ADD COLUMN lex_len INTEGER NOT NULL DEFAULT 0"
            )
        with self.read() as r:
            self.seq = r.seq()
            self.count = r.count()
            lexical = r.meta("lexical") or {}
            self.lex_total = r.lex_total()
        self.analyzer: str = lexical.get("analyzer", DEFAULT_ANALYZER)
        self.lexical_meta: bool = bool(lexical)
        """False for a collection written before the lexical index existed."""

    def _connect(self, readonly: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA synchronous = FULL")
        if readonly:
            conn.execute("PRAGMA query_only = ON")
        return conn

    def _committed(self, seq: int, count: int) -> None:
        self.seq, self.count = seq, count

    @contextlib.contextmanager
    def read(self) -> Iterator[StoreReader]:
        """A reader whose queries all see the same committed state."""
        if self._closed:
            raise NotFoundError(f"collection {self.path.parent.name!r} was deleted")
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = self._connect(readonly=True)
        try:
            conn.execute("BEGIN")
            yield StoreReader(conn)
        finally:
            conn.execute("COMMIT")
            if self._closed:
                conn.close()
            else:
                self._idle.put(conn)

    def begin(self) -> WriteTxn:
        """Start the (single) write transaction; callers serialise writers."""
        if self._closed:
            raise RuntimeError(f"store {self.path} is closed")
        if self._writer.in_transaction:
            raise RuntimeError("a write transaction is already open")
        return WriteTxn(self)

    def close(self) -> None:
        self._closed = True
        self._writer.close()
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
