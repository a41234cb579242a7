"""One table from error type to status code, and the handlers that answer in one shape.

Every error carries `error_type` (the README's table). On the /v1 routes `error` is OpenAI's
object `{"message", "type", "param", "code"}`, so OpenAI's SDKs show the message; elsewhere
it is the message itself, as text-embeddings-inference answers.

Unexpected exceptions are not handled here: `RequestMiddleware` answers them, inside
Starlette's ServerErrorMiddleware, which would log them a second time and close the
keep-alive connection.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.problems import describe
from service.api.responses import ORJSONResponse
from service.errors import QueueFullError, ServiceError

log = logging.getLogger("simsvc.api")

STATUS_BY_ERROR_TYPE: dict[str, int] = {
    "validation": 422,
    "too_many_texts": 413,
    "text_too_long": 413,
    "body_too_large": 413,
    "queue_full": 429,
    "not_ready": 503,
    "store_unavailable": 503,
    "collection_unavailable": 503,
    "index_build_failed": 500,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "unauthorized": 401,
    "forbidden": 403,
    "unsupported_media_type": 415,
    "no_cross_encoder": 424,
    "bad_bundle": 500,
    "internal": 500,
}
ERROR_TYPE_BY_STATUS = {
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    401: "unauthorized",
    403: "forbidden",
}


def error_body(
    path: str, error_type: str, message: str, param: str | None = None
) -> dict[str, Any]:
    """The error shape for a request path: OpenAI's object on /v1, the message elsewhere."""
    if path.startswith("/v1/") or path == "/v1":
        return {
            "error": {"message": message, "type": error_type, "param": param, "code": None},
            "error_type": error_type,
        }
    return {"error": message, "error_type": error_type}


def error_response(
    request: Request,
    status: int,
    error_type: str,
    message: str,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> ORJSONResponse:
    """The one error shape; counts the error by type."""
    state = getattr(request.app.state, "simsvc", None)
    if state is not None:
        state.metrics.errors.labels(error_type=error_type).inc()
    return ORJSONResponse(
        error_body(request.url.path, error_type, message, param),
        status_code=status,
        headers=headers,
    )


async def handle_service_error(request: Request, exc: Exception) -> ORJSONResponse:
    assert isinstance(exc, ServiceError)
    status = STATUS_BY_ERROR_TYPE.get(exc.error_type, 500)
    headers: dict[str, str] = {}
    if isinstance(exc, QueueFullError):
        headers["Retry-After"] = str(exc.retry_after)
    if exc.error_type == "unauthorized":
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(request, status, exc.error_type, exc.message, headers, exc.param)


def describe_problems(errors: Sequence[Any]) -> str:
    """Pydantic's errors as one line: `field.path: what is allowed (got ...); ...`."""
    return describe(errors)[0]


async def handle_validation_error(request: Request, exc: Exception) -> ORJSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    message, param = describe(errors)
    if errors and errors[0].get("type") == "json_invalid":
        param = None
    return error_response(request, 422, "validation", message, param=param)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's 405 names only the first
    route's)."""
    methods: set[str] = set()
    path = request.scope.get("path", "")
    for route in iter_route_contexts(request.app.routes):
        regex = getattr(route, "path_regex", None)
        if route.methods and regex is not None and regex.match(path):
            methods |= set(route.methods)
    order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return sorted(methods, key=lambda m: (order.index(m) if m in order else len(order), m))


async def handle_http_error(request: Request, exc: Exception) -> ORJSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error_type = ERROR_TYPE_BY_STATUS.get(
        exc.status_code, "validation" if exc.status_code < 500 else "internal"
    )
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    return error_response(request, exc.status_code, error_type, str(exc.detail), headers)


def install(app: FastAPI) -> None:
    """Register the handlers on an app."""
    app.add_exception_handler(ServiceError, handle_service_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
