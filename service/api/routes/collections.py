"""Collections: create and configure, bulk-index documents (JSON or NDJSON), search.

Reads need the read scope, document writes the write scope, and collection-level changes
(create, reconfigure, delete, refit) the admin scope.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Path, Request
from fastapi.exceptions import RequestValidationError
from starlette.types import Scope

from service.api.auth import AdminScope, ReadScope, WriteScope
from service.api.collection_schemas import (
    NAME_PATTERN,
    CollectionOptions,
    DocumentIn,
    DocumentOut,
    DocumentsRequest,
    IndexedResponse,
    RefitRequest,
    SearchRequest,
    SearchResponse,
)
from service.api.deps import Abandonable, CollectionsDep, EngineDep, StateDep
from service.api.handlers import describe_problems
from service.api.responses import ORJSONResponse, errors
from service.api.routes.common import inline_schema
from service.api.routing import ApiRoute, loads, parse_json_body
from service.api.validation import check_index_params, filter_limits
from service.errors import (
    BodyTooLargeError,
    TooManyTextsError,
    UnsupportedMediaTypeError,
    ValidationError,
)
from service.runtime.fusion import explain
from service.runtime.imported import EmbeddingError, decode_embedding
from service.runtime.search import SearchRequest as SearchQuery
from service.runtime.store.base import Document
from service.runtime.store.filters import check_filter

router = APIRouter(prefix="/v1/collections", tags=["collections"], route_class=ApiRoute)
Name = Annotated[
    str,
    Path(
        pattern=NAME_PATTERN,
        description="1-64 letters, digits, '_' or '-', starting with a letter or digit",
    ),
]

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})
_DOCUMENTS_PATH = re.compile(r"^/v1/collections/[^/]+/documents$")


_DOCUMENTS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_schema(DocumentsRequest.model_json_schema())},
            "application/x-ndjson": {
                "schema": {
                    "type": "string",
                    "description": "one document object per line, of any number of lines",
                }
            },
        },
    }
}


def _media_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def is_document_stream(scope: Scope) -> bool:
    """An NDJSON upload: exempt from the whole-body limit (each line has its own)."""
    if scope.get("method") != "POST" or not _DOCUMENTS_PATH.match(scope.get("path", "")):
        return False
    content_type = dict(scope.get("headers", [])).get(b"content-type", b"").decode("latin-1")
    return _media_type(content_type) in NDJSON_TYPES


def _document(doc: DocumentIn, dims: int, where: str) -> Document:
    """The document as the runtime takes it; an imported vector decoded and checked here,
    so that the error names where it is (`where`: the NDJSON line, the JSON index)."""
    embedding = None
    if doc.embedding is not None:
        try:
            embedding = decode_embedding(doc.embedding, dims)
        except EmbeddingError as exc:
            raise ValidationError(f"{where} (document {doc.id!r}): {exc}") from exc
    return Document(doc.id, doc.text, doc.metadata, embedding)


async def _batches(docs: Sequence[Document], size: int) -> AsyncIterator[Sequence[Document]]:
    for start in range(0, len(docs), size):
        yield docs[start : start + size]


async def ndjson_batches(
    chunks: AsyncIterator[bytes], max_line: int, size: int, dims: int
) -> AsyncIterator[list[Document]]:
    """Documents of an NDJSON stream in batches; only one batch and one line in memory.
    Imported vectors must have `dims` components."""
    buffer = bytearray()
    line_no = 0
    batch: list[Document] = []

    def parse(line: bytes) -> Document | None:
        if not line.strip():
            return None
        try:
            data = loads(line)
        except ValueError as exc:
            raise ValidationError(f"line {line_no}: {exc}") from exc
        try:
            doc = DocumentIn.model_validate(data)
        except pydantic.ValidationError as exc:
            raise ValidationError(f"line {line_no}: {describe_problems(exc.errors())}") from exc
        return _document(doc, dims, f"line {line_no}")

    def too_long() -> BodyTooLargeError:
        return BodyTooLargeError(f"NDJSON line {line_no} exceeds the limit of {max_line} bytes")

    async for chunk in chunks:
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line_no += 1
            if end - start > max_line:
                raise too_long()
            doc = parse(bytes(buffer[start:end]))
            start = end + 1
            if doc is not None:
                batch.append(doc)
                if len(batch) >= size:
                    yield batch
                    batch = []
        del buffer[:start]
        if len(buffer) > max_line:
            line_no += 1
            raise too_long()
    if buffer.strip():
        line_no += 1
        doc = parse(bytes(buffer))
        if doc is not None:
            batch.append(doc)
    if batch:
        yield batch


@router.get("", dependencies=[ReadScope], responses=errors(503, openai=True))
async def list_collections(collections: CollectionsDep) -> dict[str, Any]:
    """Every collection with its count, dims, index and whitening."""
    return {"collections": await collections.describe_all()}


@router.put(
    "/{name}",
    dependencies=[AdminScope],
    status_code=201,
    responses={
        200: {"description": "reconfigured: the index was rebuilt from the stored vectors"},
        **errors(409, 413, 415, 422, 503, openai=True),
    },
)
async def put_collection(
    name: Name,
    collections: CollectionsDep,
    engine: EngineDep,
    state: StateDep,
    body: CollectionOptions | None = None,
) -> ORJSONResponse:
    """Create a collection (201), or change its index kind, parameters or dims (200, a rebuild
    from the stored vectors), its lexical analyser (the stored texts are analysed again) or
    its search defaults. Parameters not given keep their current (or default) values."""
    options = body or CollectionOptions()
    kind, params = None, None
    if options.index is not None:
        kind = options.index.kind
        given = options.index.params.model_dump(exclude_none=True)
        params = check_index_params(kind, given, state.settings)
    search = None
    if options.search is not None:
        search = {
            k: v
            for k, v in (("mode", options.search.mode), ("fusion", options.search.fusion.given()))
            if v
        }
    info, created = await collections.configure(
        name,
        engine,
        kind,
        params,
        options.dims,
        options.lexical.analyzer,
        search,
    )
    return ORJSONResponse(info, status_code=201 if created else 200)


@router.get("/{name}", dependencies=[ReadScope], responses=errors(404, 422, 503, openai=True))
async def get_collection(name: Name, collections: CollectionsDep) -> dict[str, Any]:
    """Count, dims, index kind and parameters, whitening version, model."""
    return await collections.info(name)


@router.delete("/{name}", dependencies=[AdminScope], responses=errors(404, 422, 503, openai=True))
async def delete_collection(name: Name, collections: CollectionsDep) -> dict[str, str]:
    """Delete a collection with all its documents."""
    await collections.drop(name)
    return {"deleted": name}


@router.post(
    "/{name}/documents",
    dependencies=[WriteScope],
    response_model=IndexedResponse,
    openapi_extra=_DOCUMENTS_BODY,
    responses=errors(409, 413, 415, 422, 429, 503, openai=True),
)
async def add_documents(
    name: Name, request: Request, collections: CollectionsDep, engine: EngineDep
) -> dict[str, int]:
    """Upsert documents by id (JSON body or NDJSON stream); answers once they are durable.

    The request is all or nothing. The collection is created on first write.
    """
    settings = request.app.state.simsvc.settings
    size = collections.limits.batch_documents
    dims = engine.core.dims  # a collection's raw vectors: `check_model` keeps them alike
    media_type = _media_type(request.headers.get("content-type", "application/json"))
    batches: AsyncIterator[Sequence[Document]]
    if media_type in NDJSON_TYPES:
        batches = ndjson_batches(request.stream(), settings.max_ndjson_line_bytes, size, dims)
    elif media_type == "application/json":
        await parse_json_body(request)
        payload = await request.json() if await request.body() else None
        try:
            body = DocumentsRequest.model_validate(payload)
        except pydantic.ValidationError as exc:
            raise RequestValidationError(exc.errors()) from exc
        if len(body.documents) > settings.max_documents_per_request:
            raise TooManyTextsError(
                f"{len(body.documents)} documents in one request; the limit is "
                f"{settings.max_documents_per_request} (stream more as NDJSON)"
            )
        docs = [_document(d, dims, f"documents[{i}]") for i, d in enumerate(body.documents)]
        batches = _batches(docs, size)
    else:
        raise UnsupportedMediaTypeError(
            f"content type {media_type!r}: send application/json or application/x-ndjson"
        )
    indexed, count = await collections.upsert(name, engine, batches)
    return {"indexed": indexed, "count": count}


@router.get(
    "/{name}/documents/{doc_id:path}",
    dependencies=[ReadScope],
    response_model=DocumentOut,
    responses=errors(404, 422, 503, openai=True),
)
async def get_document(name: Name, doc_id: str, collections: CollectionsDep) -> dict[str, Any]:
    """One document: id, text and metadata."""
    doc = await (await collections.get(name)).get_document(doc_id)
    return {"id": doc.id, "text": doc.text, "metadata": doc.metadata}


@router.delete(
    "/{name}/documents/{doc_id:path}",
    dependencies=[WriteScope],
    responses=errors(404, 422, 503, openai=True),
)
async def delete_document(name: Name, doc_id: str, collections: CollectionsDep) -> dict[str, Any]:
    """Delete one document; answers once the deletion is durable."""
    count = await (await collections.get(name)).delete_document(doc_id)
    return {"deleted": doc_id, "count": count}


@router.post(
    "/{name}/search",
    dependencies=[ReadScope, Abandonable],
    response_model=SearchResponse,
    responses=errors(404, 409, 413, 415, 422, 424, 429, 503, openai=True),
)
async def search(
    name: Name, body: SearchRequest, collections: CollectionsDep, engine: EngineDep, state: StateDep
) -> ORJSONResponse:
    """The k best documents for the query whose metadata match the filter: by meaning
    (dense), by words (lexical, BM25), or both fused (hybrid), optionally reranked."""
    where = check_filter(body.filter, filter_limits(state.settings))
    collection = await collections.get(name, engine)
    result = await collection.find(
        SearchQuery(
            body.query,
            body.k,
            where,
            body.mode,
            body.fusion.given() if body.fusion else None,
            body.rerank.candidates if body.rerank else 0,
        ),
    )
    results = []
    for h in result.hits:
        hit: dict[str, Any] = {
            "id": h.document.id,
            "score": h.score,
            "text": h.document.text,
            "metadata": h.document.metadata,
        }
        if body.explain:
            hit["sources"] = explain(h)
        results.append(hit)
    return ORJSONResponse({"mode": result.mode, "results": results})


@router.post(
    "/{name}/whitening:refit",
    dependencies=[AdminScope],
    responses=errors(404, 409, 415, 422, 503, openai=True),
)
async def refit_whitening(
    name: Name, collections: CollectionsDep, body: RefitRequest | None = None
) -> dict[str, Any]:
    """Fit the whitening on the collection's own documents and rebuild its index from the
    stored vectors; searches keep working meanwhile, then switch atomically."""
    source = (body or RefitRequest()).source
    return await collections.refit(name, source)
