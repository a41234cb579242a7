"""Embeddings in OpenAI's shape (texts or token ids) and in text-embeddings-inference's shape,
and OpenAI's model list."""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
from fastapi import APIRouter

from service.api.auth import ReadScope
from service.api.deps import Abandonable, EngineDep
from service.api.responses import ORJSONResponse, errors
from service.api.routes.common import timing_headers
from service.api.routing import ApiRoute
from service.api.schemas import (
    EmbedRequest,
    ModelCard,
    ModelList,
    OpenAIEmbeddingRequest,
    OpenAIEmbeddingResponse,
)
from service.errors import NotFoundError
from service.runtime.engine import Embeddings, Engine

router = APIRouter(tags=["embeddings"], dependencies=[ReadScope], route_class=ApiRoute)
_STARTED = int(time.time())


@router.post(
    "/v1/embeddings",
    response_model=OpenAIEmbeddingResponse,
    dependencies=[Abandonable],
    responses=errors(413, 415, 422, 429, 503, openai=True),
)
async def create_embeddings(body: OpenAIEmbeddingRequest, engine: EngineDep) -> ORJSONResponse:
    """Embed texts or token ids (OpenAI-compatible): whitened, normalised, optionally cut to
    `dimensions`. Token ids are of this model's vocabulary, without special tokens."""
    given = body.input
    emb: Embeddings
    if isinstance(given, str):
        emb = await engine.embed([given], dims=body.dimensions)
    elif given and all(isinstance(x, int) for x in given):
        emb = await engine.embed_ids([given], dims=body.dimensions)  # type: ignore[list-item]
    elif given and all(isinstance(x, list) for x in given):
        emb = await engine.embed_ids(given, dims=body.dimensions)  # type: ignore[arg-type]
    else:
        emb = await engine.embed(given, dims=body.dimensions)  # type: ignore[arg-type]
    vectors = np.ascontiguousarray(emb.vectors, dtype="<f4")
    data: list[dict[str, Any]]
    if body.encoding_format == "base64":
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(row.tobytes()).decode(),
            }
            for i, row in enumerate(vectors)
        ]
    else:
        data = [
            {"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(vectors)
        ]
    return ORJSONResponse(
        {
            "object": "list",
            "data": data,
            "model": engine.model_name,
            "usage": {"prompt_tokens": emb.tokens, "total_tokens": emb.tokens},
        },
        headers=timing_headers(emb.timings),
    )


def _card(engine: Engine) -> dict[str, Any]:
    return {"id": engine.model_name, "object": "model", "created": _STARTED, "owned_by": "simsvc"}


@router.get("/v1/models", response_model=ModelList, responses=errors(503, openai=True))
async def list_models(engine: EngineDep) -> dict[str, Any]:
    """The model this service embeds with (OpenAI-compatible)."""
    return {"object": "list", "data": [_card(engine)]}


@router.get(
    "/v1/models/{model:path}", response_model=ModelCard, responses=errors(404, 503, openai=True)
)
async def get_model(model: str, engine: EngineDep) -> dict[str, Any]:
    """One model by id (OpenAI-compatible); the service has one."""
    if model != engine.model_name:
        raise NotFoundError(f"no model {model!r}; this service serves {engine.model_name!r}")
    return _card(engine)


async def embed_texts(body: EmbedRequest, engine: Engine) -> ORJSONResponse:
    """TEI's /embed answer: one vector per text."""
    texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
    emb = await engine.embed(
        texts,
        pooling=body.pooling,
        whiten=body.whiten,
        normalize=body.normalize,
        truncate=body.truncate,
        dims=body.dimensions,
    )
    return ORJSONResponse(emb.vectors, headers=timing_headers(emb.timings))


@router.post(
    "/embed",
    response_model=list[list[float]],
    dependencies=[Abandonable],
    responses=errors(413, 415, 422, 429, 503),
)
async def embed(body: EmbedRequest, engine: EngineDep) -> ORJSONResponse:
    """Embed texts (text-embeddings-inference's shape) with a choice of pooling and whitening."""
    return await embed_texts(body, engine)
