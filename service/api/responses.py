"""Fast JSON responses (orjson serialises numpy arrays directly, without Python floats), and
the error responses each route documents."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse

from service.api.schemas import ErrorResponse, OpenAIErrorResponse


class ORJSONResponse(JSONResponse):
    """JSON via orjson, numpy arrays included."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


ERROR_DESCRIPTIONS: dict[int, str] = {
    401: "no valid API key (when keys are configured): `unauthorized`",
    403: "the key lacks the route's scope: `forbidden`",
    404: "no such collection or document: `not_found`",
    409: "the request conflicts with the stored state: `conflict`",
    413: "too many texts, too long a text, or too large a body: `too_many_texts`, "
    "`text_too_long`, `body_too_large`",
    415: "the body's content type is not one the route reads: `unsupported_media_type`",
    422: "malformed JSON, invalid Unicode, wrong types, or values out of range: `validation`",
    424: "the bundle has no cross-encoder (built without `--cross-model`): `no_cross_encoder`",
    429: "the request would not be done within the queue's time limit: `queue_full`; "
    "retry after `Retry-After` seconds",
    503: "the model is loading or the service is shutting down: `not_ready`; the collection "
    "store cannot be reached: `store_unavailable`; a collection's files cannot be opened: "
    "`collection_unavailable`",
}


def errors(*statuses: int, openai: bool = False) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route: each error status it can answer, in its route family's
    error shape (OpenAI's on /v1, text-embeddings-inference's elsewhere)."""
    model = OpenAIErrorResponse if openai else ErrorResponse
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({401, 403, *statuses}):
        entry: dict[str, Any] = {"model": model, "description": ERROR_DESCRIPTIONS[status]}
        if status == 429:
            entry["headers"] = {
                "Retry-After": {
                    "description": "seconds until the queued work is likely done",
                    "schema": {"type": "integer"},
                }
            }
        out[status] = entry
    return out
