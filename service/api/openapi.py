"""The OpenAPI document with the configured limits written in, and the documentation pages
served with assets of the service's own (no CDN: /docs and /redoc work offline).

The schemas mark each limit that is a setting with `schemas.limit(...)`; here each marker
becomes the setting's value (`maxItems`, `maxLength`, `maximum`, ...), and the model's own
figures (dims, vocabulary, the bundle's pooling) once the engine is loaded. The document is
built again until then, and kept once it is complete.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse

from service.api.auth import DOCS_ASSETS
from service.api.schemas import LIMIT_KEY
from service.api.state import AppState

ASSETS_PACKAGE = "fastapi_offline"
"""Ships Swagger UI (Apache-2.0) and ReDoc (MIT) builds; the package itself is MIT."""


def limit_values(state: AppState) -> dict[str, int | None]:
    """What each limit marker names: settings, and the model's figures once it is loaded."""
    values: dict[str, int | None] = {
        name: value
        for name, value in state.settings.model_dump().items()
        if isinstance(value, int) and not isinstance(value, bool)
    }
    values.update({f"max_{k}": v for k, v in state.settings.index_bounds().items()})
    engine = state.engine
    values["dims"] = engine.dims if engine else None
    values["raw_dims"] = engine.core.dims if engine else None
    values["vocab_max_id"] = engine.core.vocab_size - 1 if engine else None
    return values


def _embed_rules(schema: dict[str, Any], state: AppState) -> bool:
    """/embed's rules that tie fields together: `whiten: true` needs the bundle's pooling,
    and `dimensions` is bounded by the whitened dims when whitening, else the raw dims."""
    engine = state.engine
    if engine is None:
        return False
    props = schema.get("properties", {})
    dims = props.get("dimensions")
    if dims is not None:
        for branch in dims.get("anyOf", [dims]):
            if branch.get("type") == "integer":
                branch["maximum"] = engine.core.dims
    whitens = {"properties": {"whiten": {"const": True}}, "required": ["whiten"]}
    bundle_pooling = {"anyOf": [{"const": engine.pooling}, {"type": "null"}]}
    default_pooling = {
        "anyOf": [
            {"not": {"required": ["pooling"]}},
            {"properties": {"pooling": bundle_pooling}},
        ]
    }
    unset_whiten = {
        "anyOf": [
            {"not": {"required": ["whiten"]}},
            {"properties": {"whiten": {"type": "null"}}},
        ]
    }
    white_dims = {"anyOf": [{"type": "integer", "maximum": engine.dims}, {"type": "null"}]}
    rules: list[dict[str, Any]] = [
        {
            "if": whitens,
            "then": {"properties": {"pooling": bundle_pooling, "dimensions": white_dims}},
        },
    ]
    if engine.whitening.fitted:  # by default, whitened exactly when the pooling is the bundle's
        rules.append(
            {
                "if": {"allOf": [unset_whiten, default_pooling]},
                "then": {"properties": {"dimensions": white_dims}},
            }
        )
    schema["allOf"] = rules
    return True


def _token_id_rule(schema: dict[str, Any], state: AppState) -> None:
    """/v1/embeddings' rule that ties `input` to `token_ids`: token ids (a non-empty list of
    integers or of lists) need `"token_ids": "model"`, unless the service accepts them."""
    if state.settings.accept_token_ids:
        return
    ids = {
        "anyOf": [
            {"type": "array", "minItems": 1, "items": {"type": "integer"}},
            {"type": "array", "minItems": 1, "items": {"type": "array"}},
        ]
    }
    schema["allOf"] = [
        {
            "if": {"properties": {"input": ids}, "required": ["input"]},
            "then": {"properties": {"token_ids": {"const": "model"}}, "required": ["token_ids"]},
        }
    ]


KEYWORD_TYPES = {
    "maximum": {"integer", "number"},
    "minimum": {"integer", "number"},
    "maxLength": {"string"},
    "minLength": {"string"},
    "maxItems": {"array"},
    "minItems": {"array"},
    "maxProperties": {"object"},
}


def _constrain(node: dict[str, Any], keyword: str, value: int) -> None:
    """Set a keyword on the branches of a union it applies to (on the node itself when it is
    not a union): the tighter of it and any bound already there."""
    branches = node.get("anyOf")
    targets = (
        [b for b in branches if b.get("type") in KEYWORD_TYPES[keyword]] if branches else [node]
    )
    for target in targets:
        old = target.get(keyword)
        tighter = min if keyword.startswith("max") else max
        target[keyword] = value if old is None else tighter(old, value)


def _translate_bounds(node: Any) -> None:
    """pydantic leaves the bounds of a validator-wrapped integer inside a union untranslated
    (`ge`, `le`): give them JSON Schema's names."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for raw, keyword in (("ge", "minimum"), ("le", "maximum")):
                if isinstance(node.get(raw), int):
                    node[keyword] = node.pop(raw)
        for child in node.values():
            _translate_bounds(child)
    elif isinstance(node, list):
        for child in node:
            _translate_bounds(child)


def resolve_limits(document: Any, values: dict[str, int | None]) -> bool:
    """Replace every limit marker in place; False when some value is not known yet."""
    complete = True

    _translate_bounds(document)

    def walk(node: Any) -> None:
        nonlocal complete
        if isinstance(node, dict):
            bounds = node.pop(LIMIT_KEY, None)
            for keyword, source in (bounds or {}).items():
                value = source if isinstance(source, int) else values.get(source)
                if value is None:
                    complete = False
                else:
                    _constrain(node, keyword, value)
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(document)
    return complete


def install_openapi(app: FastAPI, state: AppState) -> None:
    """`app.openapi()` with the limits resolved, cached once the model is loaded."""
    cached: dict[str, Any] = {}

    def build() -> dict[str, Any]:
        if cached:
            return cached
        document = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
        )
        complete = resolve_limits(document, limit_values(state))
        schemas = document.get("components", {}).get("schemas", {})
        if "OpenAIEmbeddingRequest" in schemas:
            _token_id_rule(schemas["OpenAIEmbeddingRequest"], state)
        embed = schemas.get("EmbedRequest")
        if embed is not None:
            complete = _embed_rules(embed, state) and complete
        complete = _prompt_names(document, state) and complete
        for schema in _inline_bodies(document, "/", "/invocations"):
            if schema.get("title") == "TEIFeatureExtraction":
                complete = _embed_rules(schema, state) and complete
        if complete:
            cached.update(document)
        return document

    app.openapi = build  # type: ignore[method-assign]


def _prompt_names(document: dict[str, Any], state: AppState) -> bool:
    """Every `prompt_name` field is one of the loaded bundle's prompt names, or null: the
    document says what the server accepts (a name it does not have is a 422)."""
    engine = state.engine
    if engine is None:
        return False
    names = sorted(engine.prompts.prompts)
    named: dict[str, Any] = {"type": "string", "enum": names} if names else {"not": {}}

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict) and isinstance(props.get("prompt_name"), dict):
                field = props["prompt_name"]
                kept = {k: v for k, v in field.items() if k in ("title", "description", "default")}
                props["prompt_name"] = {**kept, "anyOf": [named, {"type": "null"}]}
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(document)
    return True


def _inline_bodies(document: dict[str, Any], *paths: str) -> list[dict[str, Any]]:
    out = []
    for path in paths:
        op = document.get("paths", {}).get(path, {}).get("post", {})
        schema = op.get("requestBody", {}).get("content", {}).get("application/json", {})
        out.extend(schema.get("schema", {}).get("anyOf", []))
    return out


def install_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc, with their scripts and styles served from
    `DOCS_ASSETS` out of the installed package: nothing is fetched from elsewhere."""
    assets = resources.files(ASSETS_PACKAGE) / "static"
    app.mount(
        DOCS_ASSETS.rstrip("/"),
        StaticFiles(directory=str(assets)),
        name="docs-assets",
    )
    title = f"{app.title} {app.version}"
    pages = {
        "/docs": get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS}swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}favicon.png",
            swagger_ui_parameters={"validatorUrl": None},
        ),
        "/redoc": get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{title} - ReDoc",
            redoc_js_url=f"{DOCS_ASSETS}redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS}favicon.png",
            with_google_fonts=False,
        ),
    }
    for path, page in pages.items():
        app.add_route(path, _serve(bytes(page.body)), include_in_schema=False)


def _serve(html: bytes) -> Callable[[Request], Awaitable[HTMLResponse]]:
    async def endpoint(request: Request) -> HTMLResponse:
        return HTMLResponse(html)

    return endpoint
