"""Embeddings in OpenAI's shape (texts or token ids) and in text-embeddings-inference's shape,
and OpenAI's model list."""

from __future__ import annotations

import base64
import time
from typing import Any, cast

import numpy as np
from fastapi import APIRouter

from service.api.auth import ReadScope
from service.api.deps import Abandonable, EngineDep, StateDep
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
from service.errors import NotFoundError, TextTooLongError, ValidationError
from service.runtime.engine import Embeddings, Engine

router = APIRouter(tags=["embeddings"], dependencies=[ReadScope], route_class=ApiRoute)
_STARTED = int(time.time())


@router.post(
    "/v1/embeddings",
    response_model=OpenAIEmbeddingResponse,
    dependencies=[Abandonable],
    responses=errors(413, 415, 422, 429, 503, openai=True),
)
async def create_embeddings(
    body: OpenAIEmbeddingRequest, engine: EngineDep, state: StateDep
) -> ORJSONResponse:
    """Embed texts (OpenAI-compatible): whitened, normalised, optionally cut to
    `dimensions`; texts take `prompt_name`'s prompt, else the model's default. Token ids
    only of this model's vocabulary, without special tokens, and only with
    `token_ids: "model"` (or the setting accept_token_ids)."""
    given = body.input
    emb: Embeddings
    if isinstance(given, str) or (given and all(isinstance(x, str) for x in given)):
        texts = [given] if isinstance(given, str) else cast(list[str], given)
        emb = await engine.embed(
            texts, truncate=body.truncate, dims=body.dimensions, prompt_name=body.prompt_name
        )
    else:
        flat = given and all(isinstance(x, int) for x in given)
        ids = cast(list[list[int]], [given] if flat else given)
        _check_token_ids(body, state.settings.accept_token_ids, ids, engine)
        emb = await engine.embed_ids(ids, dims=body.dimensions)
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


TOKEN_IDS_REFUSED = (
    "input: token ids are refused: they are read as this model's own vocabulary only when "
    'the request says `"token_ids": "model"`, and OpenAI clients send tiktoken ids, which '
    "mean other tokens here. Send the texts instead; with LangChain, "
    "OpenAIEmbeddings(..., check_embedding_ctx_length=False) sends strings (or "
    "tiktoken_enabled=False)"
)


def _check_token_ids(
    body: OpenAIEmbeddingRequest, accept: bool, ids: list[list[int]], engine: Engine
) -> None:
    """Token ids only when they are known to be this model's; with `truncate: false`, none
    longer than the model takes (two places go to the special tokens)."""
    if body.token_ids != "model" and not accept:
        raise ValidationError(TOKEN_IDS_REFUSED, param="input")
    if body.prompt_name is not None:
        raise ValidationError(
            "prompt_name applies to texts; token ids are encoded as they are (put the "
            "prompt's ids before them)",
            param="prompt_name",
        )
    if not body.truncate:
        room = engine.core.max_length - 2
        for i, row in enumerate(ids):
            if len(row) > room:
                raise TextTooLongError(
                    f"input {i} has {len(row)} token ids; the model takes {room} besides its "
                    "special tokens, and truncate is false",
                    param="input",
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
        prompt_name=body.prompt_name,
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
