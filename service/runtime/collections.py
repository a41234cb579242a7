"""Collections: documents bulk-indexed through the engine and searched by meaning.

The orchestration over a `CollectionStore`: it encodes texts with the engine (raw pooled
vectors), enforces the limits, checks that a collection's model matches the engine's, fits
whitenings, and hands the store documents and vectors. It never knows which store it talks
to (local SQLite + FAISS, or PostgreSQL + pgvector); see `service.runtime.store`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from service.errors import (
    ConflictError,
    NotFoundError,
    QueueFullError,
    TextTooLongError,
    ValidationError,
)
from service.runtime.engine import Engine
from service.runtime.imported import raw_vectors
from service.runtime.index import PARAMS, IndexKind, IndexSpec, param_setting
from service.runtime.lexical import ANALYZERS
from service.runtime.search import (
    SEARCH_MODES,
    SearchDefaults,
    SearchLimits,
    SearchObserver,
    SearchRequest,
    SearchResult,
    check_fusion,
    run_search,
)
from service.runtime.store.base import (
    CollectionSpec,
    CollectionStore,
    CollectionUnavailableError,
    Document,
    Filter,
    Hit,
    ModelInfo,
    RawChunks,
    StoredCollection,
    StoreWriter,
    WhiteningSource,
    WhiteningState,
    check_name,
)
from service.runtime.store.filters import check_filter, matches_nothing
from service.runtime.types import FloatArray
from service.runtime.whitening import Whitening, WhiteningAccumulator

log = logging.getLogger("simsvc.collections")


@dataclass(frozen=True)
class CollectionLimits:
    """Limits the orchestration enforces (all settings)."""

    max_collections: int = 256
    batch_documents: int = 128
    max_id_chars: int = 256
    max_text_chars: int = 20_000
    max_k: int = 1000
    queue_timeout_s: float = 30.0


@dataclass(frozen=True)
class IndexDefaults:
    """The index a collection gets when its creator does not say (all settings)."""

    kind: IndexKind = "flat"
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 512
    ivf_nlist: int = 0
    ivf_nprobe: int = 48
    ivf_pq_m: int = 48
    ivf_refine: int = 8

    def params(self, kind: IndexKind) -> dict[str, int]:
        return {name: int(getattr(self, param_setting(kind, name))) for name in PARAMS[kind]}


def model_of(engine: Engine) -> ModelInfo:
    """The model an engine's raw vectors come from."""
    return ModelInfo(engine.model_name, engine.pooling, engine.core.dims)


def check_model(name: str, theirs: ModelInfo, engine: Engine) -> None:
    """The engine must make the same kind of raw vectors the collection stores."""
    ours = model_of(engine)
    if (ours.raw_dims, ours.pooling) != (theirs.raw_dims, theirs.pooling):
        raise ConflictError(
            f"collection {name!r} holds {theirs.raw_dims}-dim {theirs.pooling} vectors of "
            f"{theirs.model}; this server's model yields {ours.raw_dims}-dim "
            f"{ours.pooling} vectors: serve the collection's model or re-index"
        )


def check_documents(docs: Sequence[Document], limits: CollectionLimits) -> None:
    """Per-document limits, checked before anything is encoded or written."""
    for doc in docs:
        if not doc.id or len(doc.id) > limits.max_id_chars:
            raise ValidationError(
                f"document id {doc.id[:40]!r} must have 1 to {limits.max_id_chars} characters"
            )
        if not doc.text:
            raise ValidationError(f"document {doc.id!r} has an empty text")
        if len(doc.text) > limits.max_text_chars:
            raise TextTooLongError(
                f"document {doc.id!r} has {len(doc.text)} characters; the limit is "
                f"{limits.max_text_chars}"
            )
        try:
            metadata = orjson.dumps(doc.metadata)
        except orjson.JSONEncodeError as exc:
            raise ValidationError(
                f"document {doc.id!r} has metadata JSON cannot hold: {exc}"
            ) from exc
        if "\x00" in doc.id or "\x00" in doc.text or b"\\u0000" in metadata:
            raise ValidationError(
                f"document {doc.id[:40]!r} holds a NUL character (U+0000), which no store keeps"
            )


class WhiteningFit:
    """A collection's next whitening from a source: its own documents, the bundle's, none."""

    def __init__(self, source: WhiteningSource) -> None:
        self.source = source

    def __call__(self, vectors: RawChunks, original: Whitening, version: int) -> WhiteningState:
        if self.source == "identity":
            return WhiteningState(Whitening.identity(original.dims_in), version, "identity")
        if self.source == "bundle":
            return WhiteningState(original, version, "bundle")
        acc = WhiteningAccumulator(original.dims_in)
        for raw in vectors():
            acc.update(raw)
        if acc.count <= original.dims_in:
            raise ConflictError(
                f"the collection has {acc.count} documents; fitting a whitening of "
                f"{original.dims_in}-dim vectors needs more than {original.dims_in}"
            )
        return WhiteningState(acc.fit(), version, "collection", acc.count)


class Collections:
    """The API's single entry point to collections, over one store."""

    def __init__(
        self,
        store: CollectionStore,
        limits: CollectionLimits | None = None,
        defaults: IndexDefaults | None = None,
        search_defaults: SearchDefaults | None = None,
        search_limits: SearchLimits | None = None,
        observer: SearchObserver | None = None,
        analyzer: str = "english",
    ) -> None:
        self.store = store
        self.limits = limits or CollectionLimits()
        self.defaults = defaults or IndexDefaults()
        self.search_defaults = search_defaults or SearchDefaults()
        self.search_limits = search_limits or SearchLimits(max_k=self.limits.max_k)
        self.observer = observer
        self.analyzer = analyzer

    async def open(self) -> None:
        await self.store.open()

    async def close(self) -> None:
        await self.store.close()

    async def names(self) -> list[str]:
        return await self.store.names()

    async def info(self, name: str) -> dict[str, Any]:
        """The store's figures, with the search defaults in effect (the service's settings
        overridden by the collection's own)."""
        info = await self.store.info(name)
        overrides = info.get("search") or {}
        info["search"] = {
            **self.search_defaults.overridden(overrides).as_dict(),
            "overrides": overrides,
        }
        return info

    async def describe_all(self) -> list[dict[str, Any]]:
        """Every collection's info; one dropped meanwhile is left out."""
        out = []
        for name in await self.store.names():
            try:
                out.append(await self.info(name))
            except NotFoundError:
                continue
            except CollectionUnavailableError as exc:
                out.append({"name": name, "available": False, "problem": exc.message})
        return out

    # -- collections ---------------------------------------------------------------------

    def _spec(
        self, current: IndexSpec | None, kind: IndexKind | None, params: Mapping[str, int]
    ) -> IndexSpec:
        kind = kind or (current.kind if current else self.defaults.kind)
        base = dict(current.params) if current and current.kind == kind else {}
        unknown = set(params) - set(PARAMS[kind])
        if unknown:
            raise ValidationError(
                f"{kind} takes parameters {sorted(PARAMS[kind])}, not {sorted(unknown)}"
            )
        try:
            return IndexSpec(kind, {**self.defaults.params(kind), **base, **params})
        except ValueError as exc:
            raise ValidationError(str(exc)) from exc

    @staticmethod
    def _check_dims(dims: int, limit: int) -> int:
        if not 1 <= dims <= limit:
            raise ValidationError(f"dims must be in 1..{limit}, got {dims}")
        return dims

    async def get(self, name: str, engine: Engine | None = None) -> CollectionHandle:
        """The collection for one request, looked up once (`NotFoundError` if none); bound
        to `engine` for the calls that encode (search, upsert)."""
        return CollectionHandle(self, await self.store.entry(name), engine)

    async def _create(
        self,
        name: str,
        engine: Engine,
        kind: IndexKind | None = None,
        params: Mapping[str, int] | None = None,
        dims: int | None = None,
        analyzer: str | None = None,
        search: Mapping[str, Any] | None = None,
    ) -> bool:
        """Create the collection with these options unless it exists; True if created."""
        check_name(name)
        names = await self.store.names()
        if name in names:
            return False
        spec = self._spec(None, kind, params or {})
        dims = self._check_dims(dims or engine.whitening.dims_out, engine.whitening.dims_out)
        if len(names) >= self.limits.max_collections:
            raise ConflictError(
                f"{len(names)} collections exist; the limit is {self.limits.max_collections}"
            )
        analyzer = self._analyzer(analyzer or self.analyzer)
        stored = self._search(search) if search is not None else {}
        return await self.store.create(
            name,
            CollectionSpec(model_of(engine), spec, dims, engine.whitening, analyzer, stored),
        )

    @staticmethod
    def _analyzer(name: str) -> str:
        if name not in ANALYZERS:
            raise ValidationError(f"analyzer must be one of {list(ANALYZERS)}, got {name!r}")
        return name

    def _search(self, search: Mapping[str, Any]) -> dict[str, Any]:
        """Validated search defaults for a collection, as stored."""
        mode = search.get("mode")
        if mode is not None and mode not in SEARCH_MODES:
            raise ValidationError(f"search mode must be one of {list(SEARCH_MODES)}")
        fusion = dict(search.get("fusion") or {})
        try:
            check_fusion(replace(self.search_defaults.fusion, **fusion), self.search_limits)
        except TypeError as exc:
            raise ValidationError(f"unknown fusion parameter: {exc}") from exc
        return {k: v for k, v in (("mode", mode), ("fusion", fusion)) if v}

    async def configure(
        self,
        name: str,
        engine: Engine,
        kind: IndexKind | None = None,
        params: Mapping[str, int] | None = None,
        dims: int | None = None,
        analyzer: str | None = None,
        search: Mapping[str, Any] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Create a collection, or change its index kind, parameters or dims (a rebuild),
        its lexical analyser (the lexical index is rebuilt) or its search defaults."""
        created = await self._create(name, engine, kind, params, dims, analyzer, search)
        if not created:
            check_model(name, await self.store.model(name), engine)
            current, current_dims = await self.store.index_spec(name)
            white = (await self.store.info(name))["whitening"]
            spec = self._spec(current, kind, params or {})
            new_dims = self._check_dims(dims or current_dims, int(white["dims"]))
            await self.store.configure(
                name,
                spec,
                new_dims,
                self._analyzer(analyzer) if analyzer else None,
                self._search(search) if search is not None else None,
            )
        return await self.info(name), created

    async def drop(self, name: str) -> None:
        """Delete a collection and its documents, after its in-flight writes."""
        await self.store.drop(name)

    # -- documents -----------------------------------------------------------------------

    async def encode(self, engine: Engine, texts: Sequence[str]) -> FloatArray:
        """Raw pooled vectors of documents (the bundle's document prompt before each); waits
        (bounded) for room in the encoder queue."""
        deadline = time.monotonic() + self.limits.queue_timeout_s
        delay = 0.02
        while True:
            try:
                emb = await engine.embed(
                    texts, whiten=False, normalize=False, limit=len(texts), role="document"
                )
                return emb.vectors
            except QueueFullError:
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(2 * delay, 1.0)

    async def upsert(
        self, name: str, engine: Engine, batches: AsyncIterator[Sequence[Document]]
    ) -> tuple[int, int]:
        """Insert or replace documents by id, batch by batch, in one transaction; the
        collection is created on first write.

        Answers (indexed, count) once the transaction is durable. On any error nothing of
        the request is stored, and a collection this request created is removed again.
        """
        for _attempt in range(3):
            created = await self._create(name, engine)
            try:
                handle = await self.get(name, engine)
                writer = await handle.begin()
            except NotFoundError:
                continue  # deleted between create and begin: create it afresh
            try:
                return await handle.write(writer, batches)
            except BaseException:
                if created:
                    await asyncio.shield(self._drop_if_empty(name))
                raise
        raise ConflictError(f"collection {name!r} was deleted while being written; try again")

    async def _drop_if_empty(self, name: str) -> None:
        with contextlib.suppress(NotFoundError):
            await self.store.drop(name, if_empty=True)

    async def get_document(self, name: str, doc_id: str) -> Document:
        return await (await self.get(name)).get_document(doc_id)

    async def delete_document(self, name: str, doc_id: str) -> int:
        """Delete one document; the collection's new count."""
        return await (await self.get(name)).delete_document(doc_id)

    def check_search(self, query: str, k: int, where: Filter | None) -> Filter | None:
        """The request's own limits, before anything is encoded or read; the filter as the
        stores take it."""
        if len(query) > self.limits.max_text_chars:
            raise TextTooLongError(
                f"the query has {len(query)} characters; the limit is {self.limits.max_text_chars}"
            )
        if not 1 <= k <= self.limits.max_k:
            raise ValidationError(f"k must be in 1..{self.limits.max_k}, got {k}")
        return check_filter(where)

    async def search(
        self, name: str, engine: Engine, query: str, k: int, where: Filter | None = None
    ) -> list[Hit]:
        """The k documents nearest in meaning to `query` whose metadata match `where`."""
        return await (await self.get(name, engine)).search(query, k, where)

    async def find(self, name: str, engine: Engine, request: SearchRequest) -> SearchResult:
        """A search in any mode (the collection's default unless the request says)."""
        return await (await self.get(name, engine)).find(request)

    # -- whitening -----------------------------------------------------------------------

    async def refit(self, name: str, source: WhiteningSource = "collection") -> dict[str, Any]:
        """Refit the collection's whitening (on its own documents by default) and rebuild."""
        await self.store.refit(name, WhiteningFit(source))
        return await self.info(name)


class CollectionHandle:
    """One collection for one request: looked up once (its store entry, with the model and
    search defaults the lookup saw), bound to the engine serving the request and to the
    collections' limits. Routes take one per request instead of passing the name around."""

    def __init__(
        self, collections: Collections, entry: StoredCollection, engine: Engine | None
    ) -> None:
        self.collections = collections
        self.entry = entry
        self.name = entry.name
        self._engine = engine

    def check_model(self) -> Engine:
        """The bound engine, once it is known to make the collection's kind of vectors."""
        if self._engine is None:
            raise TypeError(f"collection {self.name!r} was looked up without an engine")
        check_model(self.name, self.entry.model, self._engine)
        return self._engine

    @property
    def search_defaults(self) -> SearchDefaults:
        """The service's search defaults overridden by the collection's own."""
        return self.collections.search_defaults.overridden(self.entry.search_overrides)

    async def find(self, request: SearchRequest) -> SearchResult:
        """A search in any mode (the collection's default unless the request says)."""
        engine = self.check_model()
        where = self.collections.check_search(request.query, request.k, request.where)
        request = replace(request, where=where)
        defaults = self.search_defaults
        if matches_nothing(request.where):
            return SearchResult([], request.mode or defaults.mode)
        limits, observer = self.collections.search_limits, self.collections.observer
        return await run_search(self.entry, engine, request, defaults, limits, observer)

    async def search(self, query: str, k: int, where: Filter | None = None) -> list[Hit]:
        """The k documents nearest in meaning to `query` whose metadata match `where`."""
        result = await self.find(SearchRequest(query, k, where, mode="dense"))
        return [Hit(h.document, h.score) for h in result.hits]

    async def begin(self) -> StoreWriter:
        """A write transaction, once the engine is known to suit the collection."""
        self.check_model()
        return await self.entry.begin()

    async def write(
        self, writer: StoreWriter, batches: AsyncIterator[Sequence[Document]]
    ) -> tuple[int, int]:
        """Encode and write documents batch by batch and commit: (indexed, count). On any
        error the transaction is aborted and nothing of it stays."""
        engine = self.check_model()
        limits = self.collections.limits
        indexed = 0
        try:
            async for batch in batches:
                check_documents(batch, limits)
                raw = await raw_vectors(
                    batch, engine.core.dims, lambda t: self.collections.encode(engine, t)
                )
                await writer.upsert(batch, raw)
                indexed += len(batch)
            if not indexed:
                raise ValidationError("no documents given")
            count = await writer.commit()
        except BaseException:
            writer.abort()
            raise
        return indexed, count

    async def upsert(self, batches: AsyncIterator[Sequence[Document]]) -> tuple[int, int]:
        """Insert or replace documents by id in one transaction: (indexed, count)."""
        return await self.write(await self.begin(), batches)

    async def get_document(self, doc_id: str) -> Document:
        doc = await self.entry.get(doc_id)
        if doc is None:
            raise NotFoundError(f"collection {self.name!r} has no document {doc_id!r}")
        return doc

    async def delete_document(self, doc_id: str) -> int:
        """Delete one document; the collection's new count."""
        writer = await self.entry.begin()
        try:
            found = await writer.delete(doc_id)
            if not found:
                raise NotFoundError(f"collection {self.name!r} has no document {doc_id!r}")
            return await writer.commit()
        except BaseException:
            writer.abort()
            raise
