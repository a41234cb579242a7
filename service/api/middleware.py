"""Pure-ASGI middleware: request ids, body-size limit, total-time header, request metrics,
the answer to unexpected errors, and abandoning work whose client has gone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.auth import KeyRing, is_open_path
from service.api.handlers import error_body
from service.errors import ServiceError
from service.logs import request_id_var
from service.metrics import Metrics

access_log = logging.getLogger("simsvc.access")
log = logging.getLogger("simsvc.api")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

_DISCONNECT = "simsvc.disconnect"
"""Scope key of what `abandon_on_disconnect` needs: the server's receive, an event set once
the body is read, and whether the response is complete."""
_ABANDONED = "simsvc.abandoned"
_WATCHER = "simsvc.watcher"


@dataclass
class _Disconnect:
    receive: Receive
    body_read: asyncio.Event = field(default_factory=asyncio.Event)
    responded: bool = False


def abandon_on_disconnect(scope: Scope) -> None:
    """Cancel the current request's task when its client disconnects (it times out, or goes
    away), so its queued encoder work is dropped instead of done for nobody. For routes that
    only compute (`service.api.deps.Abandonable`): nothing is left half-written."""
    state: _Disconnect | None = scope.get(_DISCONNECT)
    task = asyncio.current_task()
    if state is None or task is None or _WATCHER in scope:
        return

    async def watch() -> None:
        await state.body_read.wait()
        # After the body, the server's receive() answers only on disconnect (or once the
        # response is complete: then `responded` is set and nothing is cancelled).
        message = await state.receive()
        if message["type"] == "http.disconnect" and not state.responded:
            scope[_ABANDONED] = True
            task.cancel()

    scope[_WATCHER] = asyncio.ensure_future(watch())


CLIENT_CLOSED = 499
"""The status recorded (never sent) for a request whose client went away first (nginx's)."""


class RequestMiddleware:
    """Tags each request with an id, authenticates it, bounds its body, times and counts it.

    `streams` names the requests whose body is a stream of any length, bounded piecewise by
    their route instead (an NDJSON upload); every other body is bounded by `max_body_bytes`.

    An abandonable request is cancelled when its client disconnects
    (`abandon_on_disconnect`), and recorded as 499. An unexpected exception is logged once
    and answered with a 500 here, keeping the connection open (Starlette's outer error
    middleware would log it again and make the server close the connection).
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
        response_started = False
        limit = None if self.streams is not None and self.streams(scope) else self.max_body

        disconnect = _Disconnect(receive)
        scope[_DISCONNECT] = disconnect

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.body" and not message.get("more_body"):
                disconnect.responded = True
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = request_id
                headers["x-total-time"] = f"{(time.perf_counter() - started) * 1000:.3f}"
            await send(message)

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if limit is not None and received > limit:
                    raise HTTPException(413, f"request body exceeds the limit of {limit} bytes")
                if not message.get("more_body", False):
                    disconnect.body_read.set()
            return message

        try:
            headers = dict(scope["headers"])
            declared = headers.get(b"content-length")
            if self.keys.enabled and not is_open_path(scope["path"]):
                try:
                    auth = headers.get(b"authorization", b"").decode("latin-1") or None
                    scope["simsvc.key_name"], scope["simsvc.scopes"] = self.keys.authenticate(auth)
                except ServiceError as exc:
                    await self._reject(
                        scope,
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
                    scope,
                    send_wrapper,
                    413,
                    "body_too_large",
                    f"request body exceeds the limit of {limit} bytes",
                )
                return
            await self.app(scope, limited_receive, send_wrapper)
        except ClientDisconnect:
            if not response_started:
                status = CLIENT_CLOSED
        except asyncio.CancelledError:
            if scope.get(_ABANDONED):  # its client went away: nobody to answer
                task = asyncio.current_task()
                if task is not None and hasattr(task, "uncancel"):
                    task.uncancel()
                if not response_started:
                    status = CLIENT_CLOSED
                return
            # The server cancels what is still running when its graceful shutdown times out:
            # tell the client to retry elsewhere rather than leave it a bare 500.
            if not response_started:
                status = 503
                with contextlib.suppress(Exception):
                    await self._reject(
                        scope,
                        send_wrapper,
                        503,
                        "not_ready",
                        "the service is shutting down; retry on another replica",
                    )
            raise
        except Exception:
            log.exception("unhandled error (request %s)", request_id)
            if not response_started:
                status = 500
                await self._reject(
                    scope,
                    send_wrapper,
                    500,
                    "internal",
                    f"internal error (request id {request_id})",
                    close=False,
                )
        finally:
            watcher = scope.pop(_WATCHER, None)
            if watcher is not None:
                watcher.cancel()
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
        scope: Scope,
        send: Send,
        status: int,
        error_type: str,
        message: str,
        extra: list[tuple[bytes, bytes]] | None = None,
        *,
        close: bool = True,
    ) -> None:
        """Answer outside the app, in the one error shape (closing the connection when the
        request body may be left unread)."""
        self.metrics.errors.labels(error_type=error_type).inc()
        body = orjson.dumps(error_body(scope["path"], error_type, message))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *(extra or []),
        ]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
