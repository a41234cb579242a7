"""Pure-ASGI middleware: request ids, body-size limit, total-time header, request metrics."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar

import orjson
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.auth import OPEN_PATHS, KeyRing
from service.errors import ServiceError
from service.metrics import Metrics

request_id_var: ContextVar[str] = ContextVar("simsvc_request_id", default="-")
access_log = logging.getLogger("simsvc.access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestMiddleware:
    """Tags each request with an id, authenticates it, bounds its body, times and counts it.

    `streams` names the requests whose body is a stream of any length, bounded piecewise by
    their route instead (an NDJSON upload); every other body is bounded by `max_body_bytes`.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        max_body_bytes: int,
        keys: KeyRing | None = None,
        streams: Callable[[Scope], bool] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.keys = keys or KeyRing([])
        self.streams = streams

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        scope["simsvc.request_id"] = request_id
        token = request_id_var.set(request_id)
        status = 500
        limit = None if self.streams is not None and self.streams(scope) else self.max_body

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = request_id
                headers["x-total-time"] = f"{(time.perf_counter() - started) * 1000:.3f}"
            await send(message)

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request" and limit is not None:
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
            return message

        try:
            headers = dict(scope["headers"])
            declared = headers.get(b"content-length")
            if self.keys.enabled and scope["path"] not in OPEN_PATHS:
                try:
                    auth = headers.get(b"authorization", b"").decode("latin-1") or None
                    scope["simsvc.key_name"], scope["simsvc.scopes"] = self.keys.authenticate(auth)
                except ServiceError as exc:
                    await self._reject(
                        send_wrapper,
                        401,
                        exc.error_type,
                        exc.message,
                        [(b"www-authenticate", b"Bearer")],
                    )
                    return
            if (
                limit is not None
                and declared is not None
                and declared.isdigit()
                and int(declared) > limit
            ):
                await self._reject(
                    send_wrapper,
                    413,
                    "body_too_large",
                    f"request body exceeds the limit of {limit} bytes",
                )
            else:
                await self.app(scope, limited_receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            labels = (path, scope.get("method", ""), str(status))
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(*labels).inc()
            self.metrics.request_duration.labels(*labels).observe(elapsed)
            access_log.info(
                "%s %s %d %.1fms key=%s",
                scope.get("method", ""),
                scope["path"],
                status,
                elapsed * 1000,
                scope.get("simsvc.key_name", "-"),
            )
            request_id_var.reset(token)

    async def _reject(
        self,
        send: Send,
        status: int,
        error_type: str,
        message: str,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Answer before the app runs, in the one error shape."""
        self.metrics.errors.labels(error_type=error_type).inc()
        body = orjson.dumps({"error": message, "error_type": error_type})
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                    *(extra or []),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
