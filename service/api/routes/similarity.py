"""Pair scoring: the service's own route and text-embeddings-inference's shape."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter

from service.api.auth import ReadScope
from service.api.deps import Abandonable, EngineDep
from service.api.responses import ORJSONResponse, errors
from service.api.routes.common import timing_headers
from service.api.routing import ApiRoute
from service.api.schemas import SimilarityRequest, SimilarityResponse, TEISimilarityRequest
from service.errors import TooManyTextsError
from service.runtime.engine import Engine

router = APIRouter(tags=["similarity"], dependencies=[ReadScope, Abandonable], route_class=ApiRoute)


@router.post(
    "/v1/similarity",
    response_model=SimilarityResponse,
    responses=errors(413, 415, 422, 424, 429, 503, openai=True),
)
async def score_pairs(body: SimilarityRequest, engine: EngineDep) -> ORJSONResponse:
    """Score text pairs: bi (whitened cosine + pair head) or cross (the cross-encoder)."""
    pairs = [(p.a, p.b) for p in body.pairs]
    if body.mode == "cross":
        cross = await engine.cross_similarity(pairs, truncate=body.truncate, similarity=True)
        assert engine.cross is not None  # cross_similarity refused otherwise
        rows = [
            {"score": float(s), "probability": float(p), "similar": bool(q)}
            for s, p, q in zip(cross.scores, cross.probabilities, cross.similar, strict=True)
        ]
        return ORJSONResponse(
            {"model": engine.cross.model_name, "results": rows},
            headers=timing_headers(cross.timings),
        )
    scored = await engine.similarity(pairs, truncate=body.truncate)
    n = len(scored.scores)
    probs = scored.probabilities if scored.probabilities is not None else [None] * n
    similar = scored.similar if scored.similar is not None else [None] * n
    results = [
        {
            "score": float(s),
            "probability": None if p is None else float(p),
            "similar": None if q is None else bool(q),
        }
        for s, p, q in zip(scored.scores, probs, similar, strict=True)
    ]
    return ORJSONResponse(
        {"model": engine.model_name, "results": results}, headers=timing_headers(scored.timings)
    )


async def score_sentences_of(body: TEISimilarityRequest, engine: Engine) -> ORJSONResponse:
    """TEI's /similarity answer: the cosine of the source with each sentence, all with the
    query prompt, as pairs on /v1/similarity."""
    sentences = body.inputs.sentences
    if len(sentences) > engine.limits.max_texts:
        raise TooManyTextsError(
            f"inputs.sentences: {len(sentences)} sentences; the limit is {engine.limits.max_texts}",
            param="inputs.sentences",
        )
    emb = await engine.embed(
        [body.inputs.source_sentence, *sentences],
        truncate=body.truncate,
        limit=engine.limits.max_texts + 1,
        role="query",
    )
    scores = emb.vectors[1:] @ emb.vectors[0]
    return ORJSONResponse(np.asarray(scores, dtype=np.float32), headers=timing_headers(emb.timings))


@router.post("/similarity", response_model=list[float], responses=errors(413, 415, 422, 429, 503))
async def score_sentences(body: TEISimilarityRequest, engine: EngineDep) -> ORJSONResponse:
    """Cosine of whitened vectors between a source sentence and each of `sentences` (TEI)."""
    return await score_sentences_of(body, engine)
