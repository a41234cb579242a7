"""The route class every API router uses: JSON bodies parsed strictly, once.

The standard library's parser lets lone surrogates (`"\\ud800"`) through into Python strings,
where the tokenizer, SQLite and orjson later fail on them with a 500, and it answers invalid
UTF-8 or deep nesting with a bare 400. orjson accepts exactly RFC 8259 JSON in valid UTF-8,
without lone surrogates, at most 1024 levels deep: whatever it refuses is a 422 here, and
what it accepts is the body FastAPI validates against the route's model.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from service.errors import UnsupportedMediaTypeError


def is_json(content_type: str | None) -> bool:
    """`application/json`, `application/*+json`, or no content type at all."""
    if not content_type:
        return True
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def loads(data: bytes) -> Any:
    """JSON in valid UTF-8, without lone surrogates, at most 1024 levels deep; anything else
    raises `ValueError` with a message for the client."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the body is not valid JSON in UTF-8: {exc.msg}") from exc


async def parse_json_body(request: Request) -> None:
    """Parse the body with orjson into the cache `Request.json()` reads from."""
    content_type = request.headers.get("content-type")
    if not is_json(content_type):
        raise UnsupportedMediaTypeError(f"content type {content_type!r}: send application/json")
    body = await request.body()
    if not body:
        return
    try:
        request._json = loads(body)  # starlette's cache of the parsed body
    except ValueError as exc:
        msg = str(exc)
        if looks_like_ndjson(body):
            msg += (
                "; the body looks like NDJSON (one JSON object per line): send it with "
                "Content-Type: application/x-ndjson (routes that read documents take it)"
            )
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": msg, "input": {}}]
        ) from exc


def looks_like_ndjson(body: bytes) -> bool:
    """Two or more lines, the first of them a JSON value on its own."""
    lines = [line for line in body.strip().splitlines() if line.strip()]
    if len(lines) < 2:
        return False
    try:
        orjson.loads(lines[0])
    except orjson.JSONDecodeError:
        return False
    return True


class ApiRoute(APIRoute):
    """An APIRoute whose JSON body is parsed by `parse_json_body` first."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        if self.body_field is None:
            return handle

        async def parse_then_handle(request: Request) -> Response:
            await parse_json_body(request)
            return await handle(request)

        return parse_then_handle
