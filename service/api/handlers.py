"""One table from error type to status code, and the handlers that answer in one shape:
`{"error": message, "error_type": type}`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

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


def error_response(
    request: Request,
    status: int,
    error_type: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> ORJSONResponse:
    """The one error shape; counts the error by type."""
    state = getattr(request.app.state, "simsvc", None)
    if state is not None:
        state.metrics.errors.labels(error_type=error_type).inc()
    return ORJSONResponse(
        {"error": message, "error_type": error_type}, status_code=status, headers=headers
    )


async def handle_service_error(request: Request, exc: Exception) -> ORJSONResponse:
    assert isinstance(exc, ServiceError)
    status = STATUS_BY_ERROR_TYPE.get(exc.error_type, 500)
    headers: dict[str, str] = {}
    if isinstance(exc, QueueFullError):
        headers["Retry-After"] = str(exc.retry_after)
    if exc.error_type == "unauthorized":
        headers["WWW-Authenticate"] = "Bearer"
    return error_response(request, status, exc.error_type, exc.message, headers)


def describe_problems(errors: Sequence[Any]) -> str:
    """Pydantic's errors as one line: `field.path: message; ...` (the first ten)."""
    problems = []
    for err in errors[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        problems.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else err.get("msg", "invalid"))
    return "; ".join(problems) or "invalid request"


async def handle_validation_error(request: Request, exc: Exception) -> ORJSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(request, 422, "validation", describe_problems(exc.errors()))


async def handle_http_error(request: Request, exc: Exception) -> ORJSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error_type = ERROR_TYPE_BY_STATUS.get(
        exc.status_code, "validation" if exc.status_code < 500 else "internal"
    )
    return error_response(
        request, exc.status_code, error_type, str(exc.detail), dict(exc.headers or {})
    )


async def handle_unexpected(request: Request, exc: Exception) -> ORJSONResponse:
    """Log the traceback; tell the client nothing about internals."""
    request_id = request.scope.get("simsvc.request_id", "-")
    log.exception("unhandled error (request %s)", request_id)
    return error_response(request, 500, "internal", f"internal error (request id {request_id})")


def install(app: FastAPI) -> None:
    """Register the handlers on an app."""
    app.add_exception_handler(ServiceError, handle_service_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(Exception, handle_unexpected)
