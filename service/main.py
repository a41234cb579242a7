"""`create_app(settings)`: builds everything the service needs from plain settings.

The lifespan verifies the bundle (a bad bundle stops the start with a clear error), then
loads the ONNX session and runs a warm-up batch in the background, while the collections
are opened and their indexes recovered: `/health` answers at once, `/ready` turns 200 when
the engine is warm and the collections are open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts

from service import __version__
from service.api import handlers
from service.api.auth import KeyRing
from service.api.deps import mark_abandonable
from service.api.middleware import CLIENT_CLOSED, RequestMiddleware
from service.api.openapi import install_docs, install_openapi
from service.api.responses import ORJSONResponse
from service.api.routes import collections, embeddings, health, rerank, similarity, tei
from service.api.state import AppState
from service.errors import BundleError
from service.metrics import Metrics
from service.runtime.batching import BatchObserver, DynamicBatcher, InferFn
from service.runtime.bundle import Bundle, load_bundle
from service.runtime.collections import CollectionLimits, Collections, IndexDefaults
from service.runtime.cross import CrossCore, CrossScorer, OnnxCrossEncoder
from service.runtime.encoder import EncoderCore, OnnxEncoder
from service.runtime.engine import Engine, EngineLimits
from service.runtime.fusion import FusionParams
from service.runtime.head import Calibration, PairHead
from service.runtime.index import INDEX_KINDS
from service.runtime.index import set_threads as set_index_threads
from service.runtime.search import SEARCH_MODES, SearchDefaults, SearchLimits
from service.runtime.store.base import CollectionStore
from service.runtime.store.local import LocalStore
from service.runtime.store.local_collection import LocalOptions
from service.runtime.whitening import Whitening
from service.settings import Settings

if TYPE_CHECKING:
    from service.runtime.store.postgres import PostgresOptions

log = logging.getLogger("simsvc")

EngineFactory = Callable[[Settings, Metrics], Engine]


def _batcher(
    settings: Settings,
    infer: InferFn,
    max_tokens: int,
    max_size: int,
    max_queue: int,
    observer: BatchObserver,
) -> DynamicBatcher:
    """A dynamic batcher with the settings' wait, Retry-After and worker count."""
    return DynamicBatcher(
        infer,
        max_batch_tokens=max_tokens,
        max_batch_size=max_size,
        max_queue=max_queue,
        max_queue_seconds=settings.max_queue_seconds,
        max_wait_s=settings.batch_wait_ms / 1000.0,
        retry_after=settings.retry_after_seconds,
        observer=observer,
        workers=settings.encoder_workers,
        shutdown_timeout_s=settings.shutdown_timeout_s,
    )


def make_engine(
    settings: Settings,
    metrics: Metrics,
    core: EncoderCore,
    *,
    model_name: str,
    pooling: str,
    whitening: Whitening | None = None,
    head: PairHead | None = None,
    cross: CrossScorer | None = None,
) -> Engine:
    """Wire an encoder core into a batcher and an engine with the settings' limits."""
    batcher = _batcher(
        settings,
        core.infer,
        max(settings.max_batch_tokens, core.max_length),
        settings.max_batch_size,
        settings.max_queue_texts,
        metrics,
    )
    return Engine(
        core,
        batcher,
        model_name=model_name,
        pooling=pooling,
        whitening=whitening or Whitening.identity(core.dims),
        head=head,
        limits=EngineLimits(
            max_texts=settings.max_texts_per_request,
            max_pairs=settings.max_pairs_per_request,
            max_chars=settings.max_chars_per_text,
        ),
        similar_threshold=settings.similar_threshold,
        observer=metrics,
        cross=cross,
    )


def make_cross(
    settings: Settings,
    metrics: Metrics,
    core: CrossCore,
    *,
    model_name: str,
    calibration: Calibration | None = None,
    labels: list[str] | None = None,
    symmetric: bool = False,
) -> CrossScorer:
    """Wire a cross-encoder core into its own batcher (a second queue) and a scorer."""
    batcher = _batcher(
        settings,
        core.infer,
        max(settings.cross_max_batch_tokens, core.max_length),
        settings.cross_max_batch_size,
        settings.cross_max_queue_pairs,
        metrics.cross,
    )
    metrics.cross.queue_capacity.set(settings.cross_max_queue_pairs)
    return CrossScorer(
        core,
        batcher,
        model_name=model_name,
        calibration=calibration,
        labels=labels or [],
        threshold=0.5 if settings.similar_threshold is None else settings.similar_threshold,
        observer=metrics.cross,
        symmetric=symmetric,
    )


def cross_from_bundle(settings: Settings, metrics: Metrics, bundle: Bundle) -> CrossScorer | None:
    """The bundle's cross-encoder behind its batcher, or None when it has none."""
    info = bundle.manifest.cross
    if info is None:
        return None
    core = OnnxCrossEncoder(
        bundle.cross_model_path,
        bundle.cross_tokenizer_path,
        max_length=info.max_length,
        pad_id=info.pad_id,
        threads=settings.threads,
        cpu_arena=settings.onnx_cpu_arena,
        spin=settings.onnx_spin,
        segment_ids=info.segment_ids,
    )
    if core.num_labels != info.num_labels:
        raise BundleError(
            f"cross.onnx yields {core.num_labels} logits, manifest says {info.num_labels}"
        )
    return make_cross(
        settings,
        metrics,
        core,
        model_name=info.source.model,
        calibration=bundle.cross_calibration,
        labels=info.labels,
        symmetric=info.symmetric,
    )


def engine_from_bundle(settings: Settings, metrics: Metrics, bundle: Bundle) -> Engine:
    """The engine of a verified bundle: ONNX session, tokenizer, whitening, head."""
    manifest = bundle.manifest
    core = OnnxEncoder(
        bundle.model_path,
        bundle.tokenizer_path,
        max_length=manifest.max_length,
        pad_id=manifest.pad_id,
        threads=settings.threads,
        cpu_arena=settings.onnx_cpu_arena,
        spin=settings.onnx_spin,
    )
    if core.dims != manifest.dims.hidden or set(core.outputs) != set(manifest.outputs):
        raise BundleError(
            f"model.onnx yields {core.dims}-dim {list(core.outputs)}, manifest says "
            f"{manifest.dims.hidden}-dim {manifest.outputs}"
        )
    return make_engine(
        settings,
        metrics,
        core,
        model_name=manifest.source.model,
        pooling=manifest.pooling,
        whitening=bundle.whitening,
        head=bundle.head,
        cross=cross_from_bundle(settings, metrics, bundle),
    )


def _publish_bundle(metrics: Metrics, bundle: Bundle) -> None:
    m = bundle.manifest
    metrics.model_info.info(
        {
            "model": m.source.model,
            "pooling": m.pooling,
            "bundle_sha": bundle.sha,
            "dims": str(m.dims.output),
        }
    )
    if m.whitening.anisotropy_before:
        metrics.anisotropy.labels(stage="raw").set(m.whitening.anisotropy_before["mean_cosine"])
    if m.whitening.anisotropy_after and m.whitening.fitted:  # not a whitening auto dropped
        metrics.anisotropy.labels(stage="whitened").set(m.whitening.anisotropy_after["mean_cosine"])


def postgres_options(settings: Settings) -> PostgresOptions:
    """The PostgreSQL store's options from the settings (SIMSVC_STORE is its URL)."""
    from service.runtime.store.postgres import PostgresOptions

    return PostgresOptions(
        url=settings.store.get_secret_value() if settings.store else "",
        pool_min=settings.store_pool_min,
        pool_max=max(settings.store_pool_max, settings.store_pool_min),
        connect_timeout_s=settings.store_connect_timeout_s,
        pool_timeout_s=settings.store_pool_timeout_s,
        statement_timeout_s=settings.store_statement_timeout_s,
        maintenance_timeout_s=settings.store_maintenance_timeout_s,
        health_interval_s=settings.store_health_interval_s,
        ivf_min_documents=settings.ivf_min_documents,
        ivf_retrain_growth=settings.ivf_retrain_growth,
    )


def make_store(settings: Settings, metrics: Metrics) -> CollectionStore:
    """The store the settings name: PostgreSQL for a postgresql:// URL, else local files."""
    url = settings.store.get_secret_value() if settings.store else ""
    if url.startswith(("postgresql://", "postgres://")):
        from service.runtime.store.postgres import PostgresStore

        return PostgresStore(postgres_options(settings), observer=metrics)
    if url:
        raise BundleError("SIMSVC_STORE must be a postgresql:// URL, or unset for the local store")
    return LocalStore(
        settings.data_dir / "collections",
        LocalOptions(
            filter_oversample=settings.search_filter_oversample,
            max_candidates=settings.search_max_candidates,
            snapshot_every=settings.index_snapshot_every,
            rebuild_dead_fraction=settings.index_rebuild_dead_fraction,
            ivf_min_documents=settings.ivf_min_documents,
            ivf_retrain_growth=settings.ivf_retrain_growth,
            repair_every_s=settings.index_repair_every_s,
        ),
        observer=metrics,
    )


def make_collections(settings: Settings, metrics: Metrics) -> Collections:
    """The collections in the settings' store, with the settings' limits and defaults."""
    return Collections(
        make_store(settings, metrics),
        limits=collection_limits(settings),
        defaults=index_defaults(settings),
        search_defaults=SearchDefaults(
            settings.search_default_mode,
            FusionParams(
                settings.search_fusion_method,
                settings.search_rrf_k,
                settings.search_fusion_alpha,
                min(settings.search_fusion_candidates, settings.max_fusion_candidates),
                settings.search_fusion_normalization,
            ),
        ),
        search_limits=SearchLimits(
            max_k=settings.max_search_k,
            max_candidates=settings.max_fusion_candidates,
            max_rerank=settings.max_rerank_candidates,
        ),
        observer=metrics,
        analyzer=settings.lexical_analyzer,
    )


def collection_limits(settings: Settings) -> CollectionLimits:
    return CollectionLimits(
        max_collections=settings.max_collections,
        # A batch larger than the encoder queue could never be queued.
        batch_documents=min(settings.index_batch_documents, settings.max_queue_texts),
        max_id_chars=settings.max_document_id_chars,
        max_text_chars=settings.max_chars_per_text,
        max_k=settings.max_search_k,
        queue_timeout_s=settings.index_queue_timeout_s,
    )


def index_defaults(settings: Settings) -> IndexDefaults:
    return IndexDefaults(
        kind=settings.index_default_kind,
        hnsw_m=settings.hnsw_m,
        hnsw_ef_construction=settings.hnsw_ef_construction,
        hnsw_ef_search=settings.hnsw_ef_search,
        ivf_nlist=settings.ivf_nlist,
        ivf_nprobe=settings.ivf_nprobe,
    )


async def _open_collections(state: AppState, colls: Collections) -> None:
    """Open every collection and recover its index from its snapshot and store."""
    try:
        await colls.open()
    except Exception as exc:
        state.load_error = f"collections: {type(exc).__name__}: {exc}"
        log.exception("collections failed to open")
        return
    state.collections = colls
    log.info("collections open: %s", ", ".join(await colls.names()) or "none")


async def _start_engine(state: AppState, factory: EngineFactory | None) -> None:
    try:
        if factory is not None:
            engine = await asyncio.to_thread(factory, state.settings, state.metrics)
        else:
            assert state.bundle is not None
            engine = await asyncio.to_thread(
                engine_from_bundle, state.settings, state.metrics, state.bundle
            )
        engine.start()
        if state.settings.warmup:
            await engine.warmup()
    except Exception as exc:  # noqa: BLE001 - reported by /ready and the log
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.error("model failed to load: %s", state.load_error)
        return
    if state.bundle is None:  # an injected engine: describe it from the engine itself
        state.metrics.model_info.info(
            {
                "model": engine.model_name,
                "pooling": engine.pooling,
                "bundle_sha": "none",
                "dims": str(engine.dims),
            }
        )
    state.metrics.queue_capacity.set(state.settings.max_queue_texts)
    state.metrics.queue_work_limit.set(state.settings.max_queue_seconds)
    state.engine = engine
    log.info("ready: model %s, pooling %s, %d dims", engine.model_name, engine.pooling, engine.dims)


REBUILD_REASONS = ("recover", "reconfigure", "refit", "tombstones", "train", "repair", "lexical")
"""The reasons the collections report index rebuilds with."""


def known_request_labels(app: FastAPI, keys: bool) -> list[tuple[str, str, str]]:
    """(route, method, status) of every answer a route can give: the statuses it documents
    (401 and 403 only when keys are configured), 500, 499 where a client that goes away
    abandons the request, and 404 for unmatched paths."""
    labels: list[tuple[str, str, str]] = []
    for route in iter_route_contexts(app.routes):
        if not route.methods or not route.path:
            continue
        statuses = {str(s) for s in getattr(route, "responses", None) or {}}
        statuses |= {str(getattr(route, "status_code", None) or 200), "500"}
        if not keys:
            statuses -= {"401", "403"}
        dependencies = getattr(route, "dependencies", None) or []
        if any(d.dependency is mark_abandonable for d in dependencies):
            statuses.add(str(CLIENT_CLOSED))
        labels += [(route.path, m, s) for m in sorted(route.methods) for s in sorted(statuses)]
    for method in ("GET", "POST", "PUT", "DELETE"):
        labels.append(("unmatched", method, "404"))
        if keys:
            labels.append(("unmatched", method, "401"))
    return labels


def create_app(settings: Settings, *, engine_factory: EngineFactory | None = None) -> FastAPI:
    """The FastAPI app for these settings; `engine_factory` replaces the bundle (tests)."""
    metrics = Metrics()
    state = AppState(settings=settings, metrics=metrics)
    metrics.ready.set_function(lambda: float(state.not_ready_reason() is None))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engine_factory is None:
            if settings.bundle is None:
                raise BundleError(
                    "no model bundle: set SIMSVC_BUNDLE (or --bundle), or run `simsvc serve` "
                    "without one to build the default bundle"
                )
            state.bundle = await asyncio.to_thread(load_bundle, settings.bundle)
            _publish_bundle(metrics, state.bundle)
        loader = asyncio.create_task(_start_engine(state, engine_factory))
        set_index_threads(settings.index_threads)
        colls = make_collections(settings, metrics)
        opener = asyncio.create_task(_open_collections(state, colls))
        try:
            yield
        finally:
            loader.cancel()
            await asyncio.wait([opener])
            if state.collections is not None:
                # Before the engine stops: in-flight uploads still need it to finish.
                await state.collections.close()
                state.collections = None
            if state.engine is not None:
                await asyncio.to_thread(state.engine.stop)

    app = FastAPI(
        title="simsvc",
        version=__version__,
        summary="Semantic similarity on BERT: scores, embeddings, search.",
        default_response_class=ORJSONResponse,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.simsvc = state
    handlers.install(app)
    routers = (
        similarity.router,
        rerank.router,
        embeddings.router,
        tei.router,
        collections.router,
        health.router,
    )
    for router in routers:
        app.include_router(router)
    if settings.metrics_port is None:  # else `simsvc serve` exposes them on their own port
        app.include_router(health.metrics_router)
    install_docs(app)
    install_openapi(app, state)
    metrics.prime(
        known_request_labels(app, keys=bool(settings.api_keys)),
        handlers.STATUS_BY_ERROR_TYPE,
        index_kinds=(*INDEX_KINDS, "exact", "lexical"),
        rebuild_reasons=REBUILD_REASONS,
        search_modes=SEARCH_MODES,
    )
    app.add_middleware(
        RequestMiddleware,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        keys=KeyRing(settings.api_keys),
        streams=collections.is_document_stream,
    )
    return app


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory service.main:create_app_from_env`."""
    return create_app(Settings())
