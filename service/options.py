"""Settings turned into the runtime's options, in one place: the engine's, the store's and
the collections'. The app factory, the CLI, the benchmarks and the tests build engines and
stores through here, so a setting means the same wherever it is read.

The runtime never sees `Settings`; this module is the one bridge (below `service.main`
and `service.cli`, above `service.runtime`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.errors import BundleError
from service.runtime.assembly import EngineOptions
from service.runtime.bundle import Bundle
from service.runtime.collections import CollectionLimits, Collections, IndexDefaults
from service.runtime.engine import Engine
from service.runtime.fusion import FusionParams
from service.runtime.search import SearchDefaults, SearchLimits
from service.runtime.store.base import CollectionStore
from service.runtime.store.local import LocalStore
from service.runtime.store.local_collection import LocalOptions
from service.settings import Settings

if TYPE_CHECKING:
    from service.metrics import Metrics
    from service.runtime.store.postgres import PostgresOptions


def engine_options(settings: Settings) -> EngineOptions:
    """The engine's options from the settings."""
    return EngineOptions(
        threads=settings.threads,
        onnx_cpu_arena=settings.onnx_cpu_arena,
        onnx_spin=settings.onnx_spin,
        workers=settings.encoder_workers,
        max_batch_tokens=settings.max_batch_tokens,
        max_batch_size=settings.max_batch_size,
        max_queue_texts=settings.max_queue_texts,
        max_queue_seconds=settings.max_queue_seconds,
        batch_wait_s=settings.batch_wait_ms / 1000.0,
        retry_after=settings.retry_after_seconds,
        shutdown_timeout_s=settings.shutdown_timeout_s,
        max_texts=settings.max_texts_per_request,
        max_pairs=settings.max_pairs_per_request,
        max_chars=settings.max_chars_per_text,
        similar_threshold=settings.similar_threshold,
        cross_max_batch_tokens=settings.cross_max_batch_tokens,
        cross_max_batch_size=settings.cross_max_batch_size,
        cross_max_queue_pairs=settings.cross_max_queue_pairs,
    )


def engine_from_settings(
    settings: Settings, bundle: Bundle | None = None, metrics: Metrics | None = None
) -> Engine:
    """The engine of `bundle` (else the settings' bundle directory) with the settings'
    options, reporting to `metrics` when given."""
    source = bundle if bundle is not None else settings.bundle
    if source is None:
        raise BundleError("no model bundle: set SIMSVC_BUNDLE (or --bundle)")
    return Engine.from_bundle(
        source,
        engine_options(settings),
        observer=metrics,
        cross_observer=metrics.cross if metrics is not None else None,
    )


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


def uses_postgres(settings: Settings) -> bool:
    """Whether the settings name the PostgreSQL store (a postgresql:// URL)."""
    url = settings.store.get_secret_value() if settings.store else ""
    return url.startswith(("postgresql://", "postgres://"))


def make_store(settings: Settings, metrics: Metrics | None = None) -> CollectionStore:
    """The store the settings name: PostgreSQL for a postgresql:// URL, else local files."""
    if uses_postgres(settings):
        from service.runtime.store.postgres import PostgresStore

        return PostgresStore(postgres_options(settings), observer=metrics)
    if settings.store and settings.store.get_secret_value():
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


def make_collections(
    settings: Settings,
    metrics: Metrics | None = None,
    store: CollectionStore | None = None,
) -> Collections:
    """The collections in the settings' store (or `store`), with the settings' limits and
    defaults."""
    return Collections(
        store if store is not None else make_store(settings, metrics),
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
    """The collections' limits from the settings."""
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
    """The index a collection gets when its creator does not say, from the settings."""
    return IndexDefaults(
        kind=settings.index_default_kind,
        hnsw_m=settings.hnsw_m,
        hnsw_ef_construction=settings.hnsw_ef_construction,
        hnsw_ef_search=settings.hnsw_ef_search,
        ivf_nlist=settings.ivf_nlist,
        ivf_nprobe=settings.ivf_nprobe,
    )
