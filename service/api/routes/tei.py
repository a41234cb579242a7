"""text-embeddings-inference's `POST /` and `POST /invocations` (SageMaker's route): one route,
the task chosen by the payload, as TEI does for an embedding model.

huggingface_hub's `InferenceClient("http://host:port")` posts here: feature extraction as
`{"inputs": text or texts, "parameters": {...}}`, sentence similarity as
`{"inputs": {"source_sentence", "sentences"}}`. A task is one `Task` in `TASKS` (the payload
shapes it claims, its body model, its handler): a new task, rerank or predict, is one more
entry, and the OpenAPI document follows the table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError

from service.api.auth import ReadScope
from service.api.deps import Abandonable, EngineDep
from service.api.responses import ORJSONResponse, errors
from service.api.routes.common import inline_schema
from service.api.routes.embeddings import embed_texts
from service.api.routes.similarity import score_sentences_of
from service.api.routing import ApiRoute, parse_json_body
from service.api.schemas import TEIFeatureExtraction, TEISentenceSimilarity
from service.runtime.engine import Engine

router = APIRouter(
    tags=["text-embeddings-inference"], dependencies=[ReadScope, Abandonable], route_class=ApiRoute
)


@dataclass(frozen=True)
class Task:
    """One payload shape the route answers, and how."""

    name: str
    claims: Callable[[Any], bool]
    """Whether a payload is meant for this task (by its shape, before validation)."""
    body: type[pydantic.BaseModel]
    handle: Callable[[Any, Engine], Awaitable[ORJSONResponse]]
    answer: dict[str, Any]
    """The JSON schema of the answer."""


async def _feature_extraction(body: TEIFeatureExtraction, engine: Engine) -> ORJSONResponse:
    """`parameters` (InferenceClient's) override the fields of the same name; both are
    checked."""
    given = body.parameters
    if given is None:
        return await embed_texts(body, engine)
    engine.resolve_output(body.pooling, body.whiten, body.dimensions)
    engine.prompts.name_for(body.prompt_name)
    fields = {"normalize", "truncate", "dimensions", "prompt_name"}
    update = given.model_dump(exclude_none=True, include=fields)
    return await embed_texts(body.model_copy(update=update), engine)


def _inputs(payload: Any) -> Any:
    return payload.get("inputs") if isinstance(payload, dict) else None


_FLOATS = {"type": "array", "items": {"type": "number"}}
TASKS: list[Task] = [
    Task(
        "sentence-similarity",
        lambda p: isinstance(_inputs(p), dict),
        TEISentenceSimilarity,
        score_sentences_of,
        _FLOATS,
    ),
    Task(
        "feature-extraction",
        lambda p: True,  # the default task, as TEI's for an embedding model
        TEIFeatureExtraction,
        _feature_extraction,
        {"type": "array", "items": _FLOATS},
    ),
]


def task_for(payload: Any, tasks: Sequence[Task] = TASKS) -> Task:
    """The first task that claims the payload."""
    return next(t for t in tasks if t.claims(payload))


async def dispatch(request: Request, engine: Engine) -> ORJSONResponse:
    """Parse the body, choose its task, validate it against the task's model, answer."""
    await parse_json_body(request)
    payload = await request.json() if await request.body() else None
    task = task_for(payload)
    try:
        body = task.body.model_validate(payload)
    except pydantic.ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc
    return await task.handle(body, engine)


_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"anyOf": [inline_schema(t.body.model_json_schema()) for t in TASKS]}
            }
        },
    },
    "responses": {
        "200": {
            "description": " | ".join(t.name for t in TASKS),
            "content": {"application/json": {"schema": {"anyOf": [t.answer for t in TASKS]}}},
        }
    },
}


@router.post("/", openapi_extra=_OPENAPI, responses=errors(413, 415, 422, 429, 503))
async def predict(request: Request, engine: EngineDep) -> ORJSONResponse:
    """text-embeddings-inference's default route: feature extraction (`{"inputs": texts}`)
    or sentence similarity (`{"inputs": {"source_sentence", "sentences"}}`)."""
    return await dispatch(request, engine)


@router.post("/invocations", openapi_extra=_OPENAPI, responses=errors(413, 415, 422, 429, 503))
async def invocations(request: Request, engine: EngineDep) -> ORJSONResponse:
    """The same as `POST /` (SageMaker's route)."""
    return await dispatch(request, engine)
