"""Bearer API keys with scopes.

When keys are configured, the middleware rejects any request outside the open routes that
lacks a valid key (401), so nothing new can slip out unprotected; routes then declare the
scope they need (403 when the key lacks it). Keys are compared in constant time against
every configured key and never logged: logs and request state carry the key's name only.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence

from fastapi import Depends, Request

from service.errors import ForbiddenError, UnauthorizedError
from service.settings import ApiKey, Scope

ALL_SCOPES: frozenset[str] = frozenset({"read", "write", "admin"})
OPEN_PATHS: frozenset[str] = frozenset(
    {"/health", "/live", "/ready", "/metrics", "/docs", "/redoc", "/openapi.json"}
)
"""Routes answered without a key: probes, the scrape, and the API's own documentation."""
DOCS_ASSETS = "/docs-assets/"


def is_open_path(path: str) -> bool:
    """Probes, metrics and the documentation (pages, OpenAPI document, their assets)."""
    return path in OPEN_PATHS or path.startswith(DOCS_ASSETS)


class KeyRing:
    """The configured keys; empty means the service is open."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._keys = [
            (k.name, k.key.get_secret_value().encode(), frozenset(k.scopes)) for k in keys
        ]
        if any(not secret for _, secret, _ in self._keys):
            raise ValueError("API keys must not be empty")

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, authorization: str | None) -> tuple[str, frozenset[str]]:
        """The key's name and effective scopes; raises UnauthorizedError."""
        if not self._keys:
            return "anonymous", ALL_SCOPES
        if not authorization or not authorization.lower().startswith("bearer "):
            raise UnauthorizedError("missing API key: send 'Authorization: Bearer <key>'")
        presented = authorization[7:].strip().encode()
        match: tuple[str, frozenset[str]] | None = None
        for name, secret, scopes in self._keys:  # no early exit: constant time per key
            if hmac.compare_digest(presented, secret):
                match = (name, ALL_SCOPES if "admin" in scopes else scopes)
        if match is None:
            raise UnauthorizedError("invalid API key")
        return match


def require(scope: Scope) -> Callable[[Request], Awaitable[None]]:
    """A dependency that admits requests whose key has `scope` (async: no thread hop)."""

    async def check(request: Request) -> None:
        scopes: frozenset[str] = request.scope.get("simsvc.scopes", ALL_SCOPES)
        if scope not in scopes:
            name = request.scope.get("simsvc.key_name", "?")
            raise ForbiddenError(f"API key {name!r} lacks the {scope!r} scope")

    return check


ReadScope = Depends(require("read"))
WriteScope = Depends(require("write"))
AdminScope = Depends(require("admin"))
