"""The collection store interface: what a collection needs from storage, whichever engine.

A store holds named collections. Each collection keeps its documents (id, text, metadata)
with their raw pooled vectors (so whitening refits and index changes never re-encode), an
approximate-nearest-neighbour index over the whitened vectors, its whitening versions and a
change sequence. Two implementations: `local` (SQLite + FAISS files under the data dir, the
zero-set-up default) and `postgres` (PostgreSQL + pgvector, shared by stateless replicas).

The orchestration above (`service.runtime.collections`) encodes texts, applies limits, fits
whitenings and reports metrics; it never knows which store it talks to. Stores never encode.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from service.errors import ServiceError, ValidationError
from service.runtime.index import IndexSpec
from service.runtime.types import FloatArray
from service.runtime.whitening import Whitening

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)

Scalar = str | int | float | bool | None
Filter = Mapping[str, Scalar]
WhiteningSource = Literal["collection", "bundle", "identity"]


class CollectionObserver(Protocol):
    """Receives collection figures (the metrics module implements it)."""

    def documents(self, collection: str, count: int) -> None: ...

    def lexical_terms(self, collection: str, terms: int) -> None: ...

    def forget(self, collection: str) -> None: ...

    def searched(self, kind: str, seconds: float) -> None: ...

    def rebuilt(self, reason: str, seconds: float) -> None: ...


class NullObserver:
    def documents(self, collection: str, count: int) -> None:
        pass

    def lexical_terms(self, collection: str, terms: int) -> None:
        pass

    def forget(self, collection: str) -> None:
        pass

    def searched(self, kind: str, seconds: float) -> None:
        pass

    def rebuilt(self, reason: str, seconds: float) -> None:
        pass


class StoreUnavailableError(ServiceError):
    """The store cannot be reached (the database is down); retrying later may succeed."""

    error_type = "store_unavailable"


class CollectionUnavailableError(ServiceError):
    """A collection's storage cannot be opened; it can still be deleted."""

    error_type = "collection_unavailable"


@dataclass(frozen=True, slots=True)
class Document:
    """One document as stored: its id, full text and metadata (a JSON object)."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    embedding: FloatArray | None = field(default=None, compare=False, repr=False)
    """On the way in only: its raw vector when the client imported one (the text is then not
    encoded; see `service.runtime.imported`). Stores never read it, and never return one."""


@dataclass(frozen=True)
class Hit:
    """A search result: the document and its score (higher is nearer)."""

    document: Document
    score: float


@dataclass(frozen=True)
class ModelInfo:
    """What made a collection's raw vectors; another model's vectors cannot be mixed in."""

    model: str
    pooling: str
    raw_dims: int


@dataclass(frozen=True)
class WhiteningState:
    """A collection's whitening: the transform, its version, and what it was fitted on."""

    transform: Whitening
    version: int
    source: str
    documents: int = 0

    def meta(self) -> dict[str, Any]:
        return {"version": self.version, "source": self.source, "documents": self.documents}


@dataclass(frozen=True)
class CollectionSpec:
    """What a new collection is created with: its model, index, dims and first whitening."""

    model: ModelInfo
    index: IndexSpec
    dims: int
    whitening: Whitening
    """The bundle's transform: version 0, and what `source: bundle` returns to."""
    analyzer: str = "english"
    """The lexical index's analyser (`service.runtime.lexical`)."""
    search: Mapping[str, Any] = field(default_factory=dict)
    """Search defaults (mode, fusion) the orchestration keeps with the collection."""


def check_name(name: str) -> None:
    """Collection names are safe as directory names and SQL identifiers' suffixes."""
    if not _NAME.match(name):
        raise ValidationError(
            f"collection name {name!r} must be 1-64 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def embed(white: WhiteningState, dims: int, raw: FloatArray) -> FloatArray:
    """Whitened, cut to `dims`, unit length: what an index holds and queries use."""
    return white.transform.apply(raw, normalize=True, dims=dims)


def top_k(scores: FloatArray, k: int) -> np.ndarray:
    """Positions of the k highest scores, best first (stable among ties)."""
    keep = np.argpartition(-scores, k)[:k] if len(scores) > k else np.arange(len(scores))
    return keep[np.argsort(-scores[keep], kind="stable")]


RawChunks = Callable[[], Iterator[FloatArray]]
"""Raw vectors of every live document, chunk by chunk, from one consistent snapshot."""


class WhiteningFitter(Protocol):
    """Makes a collection's next whitening (the orchestration implements it; run in a thread).

    `vectors` yields the stored raw vectors, `original` is the bundle's transform the
    collection was created with, `version` the number the new state must carry.
    """

    def __call__(self, vectors: RawChunks, original: Whitening, version: int) -> WhiteningState: ...


class StoreWriter(abc.ABC):
    """One write transaction on one collection: all of it is committed, or none of it.

    Holds the collection's write lock from `begin` to `commit` or `abort`.
    """

    @abc.abstractmethod
    async def upsert(self, docs: Sequence[Document], raw: FloatArray) -> None:
        """Insert or replace documents by id; an id given twice in one transaction is a
        `ValidationError` (the caller aborts)."""

    @abc.abstractmethod
    async def delete(self, doc_id: str) -> bool:
        """Delete a document by id; False when there is none."""

    @abc.abstractmethod
    async def commit(self) -> int:
        """Make the transaction durable, bring the index up to date; the new count."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Undo everything written (scheduled, never blocks: callable from a cancelled task);
        a no-op after `commit` or a first `abort`."""


class StoredCollection(abc.ABC):
    """One collection as its store found it: what a request reads and writes through, so a
    request looks its collection up once (`CollectionStore.entry`).

    It holds what the lookup saw (model, stored search defaults); reads and writes go to the
    collection's current data, as the store's name-based methods would.
    """

    name: str
    model: ModelInfo
    search_overrides: Mapping[str, Any]
    """The collection's stored search defaults (mode, fusion), as `info()["search"]`."""

    @abc.abstractmethod
    async def search(self, raw: FloatArray, k: int, where: Filter | None) -> list[Hit]:
        """As `CollectionStore.search`."""

    @abc.abstractmethod
    async def lexical(self, query: str, k: int, where: Filter | None) -> list[Hit]:
        """As `CollectionStore.lexical`."""

    @abc.abstractmethod
    async def get(self, doc_id: str) -> Document | None:
        """As `CollectionStore.get`."""

    @abc.abstractmethod
    async def begin(self) -> StoreWriter:
        """As `CollectionStore.begin`."""


class CollectionStore(abc.ABC):
    """Named collections in one storage engine."""

    kind: str

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, migrate, recover: blocking work runs off the event loop."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish in-flight writes, save what is unsaved, release connections."""

    @property
    def problem(self) -> str | None:
        """None while the store answers, else why not (read by `/ready`; kept current by
        stores that can go away, such as a database)."""
        return None

    @abc.abstractmethod
    async def names(self) -> list[str]:
        """Every collection, sorted."""

    @abc.abstractmethod
    async def create(self, name: str, spec: CollectionSpec) -> bool:
        """Create a collection; False (and no change) when it exists already."""

    @abc.abstractmethod
    async def entry(self, name: str) -> StoredCollection:
        """Look a collection up once for a request (`NotFoundError` if there is none)."""

    @abc.abstractmethod
    async def model(self, name: str) -> ModelInfo:
        """The model a collection's raw vectors come from (`NotFoundError` if none)."""

    @abc.abstractmethod
    async def info(self, name: str) -> dict[str, Any]:
        """name, count, dims, index (kind, params, state), whitening, model, seq."""

    @abc.abstractmethod
    async def drop(self, name: str, *, if_empty: bool = False) -> bool:
        """Delete a collection and everything in it, after its in-flight writes; with
        `if_empty` only when it holds no document (else False, and no change)."""

    @abc.abstractmethod
    async def begin(self, name: str) -> StoreWriter:
        """Start a write transaction (waits for the collection's other writer)."""

    @abc.abstractmethod
    async def get(self, name: str, doc_id: str) -> Document | None:
        """One document, or None."""

    @abc.abstractmethod
    async def search(self, name: str, raw: FloatArray, k: int, where: Filter | None) -> list[Hit]:
        """The k live documents whose whitened vectors are nearest the whitened `raw` query
        (one row) among those whose metadata equal `where` on every key; k of them whenever
        that many match."""

    @abc.abstractmethod
    async def lexical(self, name: str, query: str, k: int, where: Filter | None) -> list[Hit]:
        """The k live documents ranking best for `query` by BM25 over the collection's
        analysed terms (any query term may match), among those matching `where`."""

    @abc.abstractmethod
    async def configure(
        self,
        name: str,
        index: IndexSpec | None = None,
        dims: int | None = None,
        analyzer: str | None = None,
        search: Mapping[str, Any] | None = None,
    ) -> None:
        """Change the index kind/parameters or the dims kept (a rebuild from the stored raw
        vectors; searches go on meanwhile and switch atomically), the lexical analyser (the
        lexical index is rebuilt from the stored texts), or the search defaults."""

    @abc.abstractmethod
    async def refit(self, name: str, fitter: WhiteningFitter) -> None:
        """Swap in a new whitening made by `fitter` and re-index under it, atomically for
        every reader."""

    async def index_spec(self, name: str) -> tuple[IndexSpec, int]:
        """The collection's current index spec and dims."""
        info = await self.info(name)
        index = info["index"]
        return IndexSpec(index["kind"], index["params"]), int(info["dims"])
