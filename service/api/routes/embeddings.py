"""Embeddings in OpenAI's shape and in text-embeddings-inference's shape."""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter

from service.api.auth import ReadScope
from service.api.deps import EngineDep
from service.api.responses import ORJSONResponse
from service.api.routes.common import timing_headers
from service.api.schemas import EmbedRequest, OpenAIEmbeddingRequest, OpenAIEmbeddingResponse

router = APIRouter(tags=["embeddings"], dependencies=[ReadScope])


@router.post("/v1/embeddings", response_model=OpenAIEmbeddingResponse)
async def create_embeddings(body: OpenAIEmbeddingRequest, engine: EngineDep) -> ORJSONResponse:
    """Embed texts (OpenAI-compatible): whitened, normalised, optionally cut to `dimensions`."""
    texts = [body.input] if isinstance(body.input, str) else body.input
    emb = await engine.embed(texts, dims=body.dimensions)
    vectors = np.ascontiguousarray(emb.vectors, dtype="<f4")
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


@router.post("/embed", response_model=list[list[float]])
async def embed(body: EmbedRequest, engine: EngineDep) -> ORJSONResponse:
    """Embed texts (text-embeddings-inference's shape) with a choice of pooling and whitening."""
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
