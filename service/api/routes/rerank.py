"""The cross-encoder in text-embeddings-inference's shapes: `/rerank` and `/predict`.

`/rerank` uses the bundle's relevance reranker (`simsvc build --reranker`) when it has one,
else its cross-encoder; `/predict` always the similarity cross-encoder. Both answer 424
`no_cross_encoder` on a bundle with neither, as TEI does on a model that is not a sequence
classifier. With `raw_scores` false a score is the model's probability (sigmoid of one
logit, softmax over two), as TEI returns it.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
from fastapi import APIRouter

from service.api.auth import ReadScope
from service.api.deps import Abandonable, EngineDep, StateDep
from service.api.responses import ORJSONResponse, errors
from service.api.routes.common import timing_headers
from service.api.routing import ApiRoute
from service.api.schemas import Prediction, PredictRequest, Rank, RerankRequest
from service.errors import NoCrossEncoderError, ValidationError
from service.runtime.cross import Direction, PairInput, softmax
from service.runtime.engine import Engine

router = APIRouter(
    tags=["cross-encoder"], dependencies=[ReadScope, Abandonable], route_class=ApiRoute
)
ERRORS = errors(413, 415, 422, 424, 429, 503)


def _needs_cross(engine: Engine, route: str, relevance: bool = False) -> None:
    """The 424 in this route's words (the engine's names /v1/similarity's modes)."""
    if (engine.ranker if relevance else engine.cross) is None:
        raise NoCrossEncoderError(
            f"{route} needs a bundle with a cross-encoder, and this one has none: build it "
            "with `simsvc build ... --cross-model CHECKPOINT`; for scores without one, use "
            "/v1/similarity (mode bi) or /similarity"
        )


def _direction(value: str) -> Direction:
    return cast(Direction, value.lower())


@router.post(
    "/rerank", response_model=list[Rank], response_model_exclude_none=True, responses=ERRORS
)
async def rerank(body: RerankRequest, engine: EngineDep, state: StateDep) -> ORJSONResponse:
    """Rank texts by relevance to the query, best first (TEI): the bundle's reranker scores
    them when it has one, else its cross-encoder."""
    if not body.texts:
        raise ValidationError("`texts` cannot be empty")
    _needs_cross(engine, "/rerank", relevance=True)
    scored = await engine.cross_similarity(
        [(body.query, text) for text in body.texts],
        truncate=body.truncate,
        direction=_direction(body.truncation_direction),
        limit=state.settings.max_rerank_texts,
        relevance=True,
    )
    values = scored.raw if body.raw_scores else scored.scores
    order = np.argsort(-values, kind="stable")
    ranks: list[dict[str, Any]] = []
    for i in order:
        rank: dict[str, Any] = {"index": int(i), "score": float(values[i])}
        if body.return_text:
            rank["text"] = body.texts[i]
        ranks.append(rank)
    return ORJSONResponse(ranks, headers=timing_headers(scored.timings))


def _predict_inputs(inputs: str | list[str] | list[list[str]]) -> tuple[list[PairInput], bool]:
    """TEI's /predict inputs as (a, b-or-None) items, and whether the request was a batch."""
    if isinstance(inputs, str):
        return [(inputs, None)], False
    if all(isinstance(x, str) for x in inputs):
        if len(inputs) != 2:
            raise ValidationError(
                f"inputs: a list of strings is one pair and needs exactly 2, got {len(inputs)}; "
                "send a batch as [[a, b], [c], ...]"
            )
        a, b = cast(list[str], inputs)
        return [(a, b)], False
    items: list[PairInput] = []
    for i, item in enumerate(cast(list[list[str]], inputs)):
        if len(item) == 1:
            items.append((item[0], None))
        elif len(item) == 2:
            items.append((item[0], item[1]))
        else:
            raise ValidationError(f"inputs.{i}: a batch item is [text] or [a, b], got {len(item)}")
    return items, True


@router.post("/predict", response_model=list[Prediction] | list[list[Prediction]], responses=ERRORS)
async def predict(body: PredictRequest, engine: EngineDep) -> ORJSONResponse:
    """The cross-encoder's label scores for a text, a pair, or a batch of them (TEI)."""
    items, batch = _predict_inputs(body.inputs)
    _needs_cross(engine, "/predict")
    scored = await engine.cross_similarity(
        items, truncate=body.truncate, direction=_direction(body.truncation_direction)
    )
    assert engine.cross is not None  # cross_similarity refused otherwise
    labels = engine.cross.labels
    logits = np.asarray(scored.logits, dtype=np.float64)
    if body.raw_scores:
        values = logits
    elif logits.shape[1] == 1:
        values = scored.scores[:, None]
    else:
        values = softmax(logits)
    predictions = [
        sorted(
            ({"score": float(v), "label": label} for v, label in zip(row, labels, strict=True)),
            key=lambda p: -cast(float, p["score"]),
        )
        for row in values
    ]
    return ORJSONResponse(
        predictions if batch else predictions[0], headers=timing_headers(scored.timings)
    )
