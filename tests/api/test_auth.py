"""API keys: 401 without a valid key on every non-open route, 403 without the scope."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from service.api.auth import DOCS_ASSETS, is_open_path
from service.settings import ApiKey, Settings
from tests.api.conftest import fake_factory

KEYS = {"reader": "r-secret-123", "writer": "w-secret-456", "root": "a-secret-789"}


@pytest.fixture
def keyed(make_client: Callable[..., TestClient], settings: Settings) -> TestClient:
    keys = [
        ApiKey(name="reader", key=KEYS["reader"], scopes=["read"]),  # type: ignore[arg-type]
        ApiKey(name="writer", key=KEYS["writer"], scopes=["write"]),  # type: ignore[arg-type]
        ApiKey(name="root", key=KEYS["root"], scopes=["admin"]),  # type: ignore[arg-type]
    ]
    return make_client(
        settings.model_copy(update={"api_keys": keys}), engine_factory=fake_factory()
    )


def _auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def test_no_route_outside_the_open_ones_answers_without_a_key(keyed: TestClient) -> None:
    checked = 0
    for route in iter_route_contexts(keyed.app.routes):  # type: ignore[attr-defined]
        path = route.path or ""
        if is_open_path(path) or path == DOCS_ASSETS.rstrip("/"):
            continue
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            resp = keyed.request(method, concrete)
            assert resp.status_code == 401, (method, path, resp.status_code)
            if method != "HEAD":
                assert resp.json()["error_type"] == "unauthorized"
            assert resp.headers["www-authenticate"] == "Bearer"
            checked += 1
    assert checked >= 18  # every API route and method, /info
    assert keyed.get("/no/such/route").status_code == 401


def test_open_routes_need_no_key(keyed: TestClient) -> None:
    for path in ("/health", "/live", "/ready", "/metrics", "/docs", "/redoc", "/openapi.json"):
        assert keyed.get(path).status_code == 200, path
    assert keyed.get(f"{DOCS_ASSETS}swagger-ui.css").status_code == 200


def test_wrong_or_malformed_key_is_401(keyed: TestClient) -> None:
    body = {"inputs": "x"}
    assert (
        keyed.post("/embed", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    )
    assert (
        keyed.post("/embed", json=body, headers={"Authorization": KEYS["reader"]}).status_code
        == 401
    )


def test_read_scope(keyed: TestClient) -> None:
    pair = {"pairs": [{"a": "x", "b": "y"}]}
    assert keyed.post("/v1/similarity", json=pair, headers=_auth("reader")).status_code == 200
    assert keyed.get("/info", headers=_auth("reader")).status_code == 200
    denied = keyed.post("/v1/similarity", json=pair, headers=_auth("writer"))
    assert denied.status_code == 403
    message = "API key 'writer' lacks the 'read' scope"
    assert denied.json() == {
        "error": {"message": message, "type": "forbidden", "param": None, "code": None},
        "error_type": "forbidden",
    }
    tei = keyed.post("/similarity", json={"inputs": {"source_sentence": "x", "sentences": ["y"]}})
    assert keyed.post("/embed", json={"inputs": "x"}, headers=_auth("writer")).json() == {
        "error": message,
        "error_type": "forbidden",
    }
    assert tei.status_code == 401
    assert keyed.post("/v1/similarity", json=pair, headers=_auth("root")).status_code == 200


def test_every_api_route_declares_a_scope(keyed: TestClient) -> None:
    for route in iter_route_contexts(keyed.app.routes):  # type: ignore[attr-defined]
        if isinstance(route.original_route, APIRoute) and not is_open_path(route.path or ""):
            assert route.dependencies or any(
                d.call.__qualname__.startswith("require")
                for d in route.dependant.dependencies
                if d.call is not None
            ), route.path


def test_keys_are_never_logged(keyed: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    keyed.post("/embed", json={"inputs": "x"}, headers=_auth("reader"))
    keyed.post("/embed", json={"inputs": "x"}, headers=_auth("writer"))
    keyed.post("/embed", json={"inputs": "x"}, headers={"Authorization": "Bearer guess"})
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert not any(secret in text for secret in KEYS.values())


def test_empty_keys_are_refused() -> None:
    from service.api.auth import KeyRing

    with pytest.raises(ValueError):
        KeyRing([ApiKey(name="x", key="", scopes=["read"])])  # type: ignore[arg-type]


def test_keys_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "SIMSVC_API_KEYS", '[{"name": "ci", "key": "s3cret", "scopes": ["read", "write"]}]'
    )
    keys = Settings().api_keys
    assert keys[0].name == "ci" and keys[0].scopes == ["read", "write"]
    assert "s3cret" not in repr(keys)
