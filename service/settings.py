"""Service settings: every limit and path in one place, read from SIMSVC_* only when asked.

Only `service.main` and `service.cli` construct `Settings`; everything below them receives
plain values, so no module reads the environment at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.runtime.index import PARAM_RANGES
from service.runtime.lexical import AnalyzerName

_REPO_ROOT = Path(__file__).resolve().parent.parent


def default_shared_dir() -> Path:
    """`../shared` beside the repository root (the read-only models and data sets)."""
    return _REPO_ROOT.parent / "shared"


def default_cache_dir() -> Path:
    """Where `simsvc serve` caches the default bundle it builds."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "simsvc"


Scope = Literal["read", "write", "admin"]


class ApiKey(BaseModel):
    """One client key: a name for logs, the secret, and its scopes (admin implies all)."""

    name: str
    key: SecretStr
    scopes: list[Scope]


class Settings(BaseSettings):
    """All runtime settings; environment variables use the `SIMSVC_` prefix."""

    model_config = SettingsConfigDict(env_prefix="SIMSVC_", env_file=None, extra="ignore")

    # Where things are.
    shared: Path = Field(default_factory=default_shared_dir)
    bundle: Path | None = None
    model: str | None = None
    default_quantize: Literal["none", "int8", "int8-channel"] = Field(
        default="none",
        description="the default bundle's graph: fp32 (none; scores as sentence-transformers "
        "does), or int8 (about 2-3x the CPU throughput; its STS-B dev cost, measured at build "
        "time, is recorded in the manifest)",
    )
    cache_dir: Path = Field(default_factory=default_cache_dir)
    data_dir: Path = Path("data")

    # Server.
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    log_json: bool = False
    metrics_port: int | None = Field(
        default=None, description="serve /metrics on this port instead of the API port"
    )

    # Encoder.
    threads: int = Field(
        default=0, ge=0, description="ONNX Runtime intra-op threads; 0 = all cores"
    )
    encoder_workers: int = Field(
        default=1,
        ge=1,
        description="batcher threads running the encoder side by side; with workers > 1 set "
        "threads so that threads * workers is about the core count (see BENCHMARKS.md)",
    )
    warmup: bool = True
    onnx_spin: bool = Field(
        default=False,
        description="let ONNX Runtime threads spin between runs: off, they leave the cores to "
        "the event loop (c=32 throughput 281 -> 351 texts/s, same single-pair latency; "
        "BENCHMARKS.md)",
    )
    onnx_cpu_arena: bool = Field(
        default=True, description="ONNX Runtime CPU memory arena (see BENCHMARKS.md, memory)"
    )

    # Request limits.
    max_texts_per_request: int = Field(default=256, ge=1)
    max_chars_per_text: int = Field(default=20_000, ge=1)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_pairs_per_request: int = Field(default=128, ge=1)
    accept_token_ids: bool = Field(
        default=False,
        description="read token ids on /v1/embeddings as this model's own vocabulary ids "
        "without the request saying so; off: they are refused (clients such as LangChain "
        "send OpenAI's tiktoken ids, which mean other tokens here)",
    )

    # Dynamic batcher.
    max_batch_tokens: int = Field(default=8192, ge=1, description="padded tokens per batch")
    max_batch_size: int = Field(default=64, ge=1)
    batch_wait_ms: float = Field(default=0.0, ge=0.0)
    max_queue_texts: int = Field(default=4096, ge=1)
    max_queue_seconds: float = Field(
        default=5.0,
        gt=0.0,
        description="a request is admitted when it would be done within this many seconds, "
        "estimated from the tokens queued ahead of it and the measured throughput; else 429 "
        "with a Retry-After saying when it would fit. Keep it below the clients' time-outs",
    )
    retry_after_seconds: int = Field(default=1, ge=0, description="the least Retry-After")
    shutdown_timeout_s: float = Field(
        default=10.0,
        ge=0.0,
        description="on SIGTERM, how long in-flight requests and queued work may take before "
        "they are failed (503) and the process exits",
    )

    # Collection store.
    store: SecretStr | None = Field(
        default=None,
        description="where collections live: unset = the local store (SQLite + FAISS files "
        "under data_dir/collections, one process); postgresql://user:pass@host/db = "
        "PostgreSQL + pgvector, shared by any number of replicas",
    )
    store_pool_min: int = Field(default=1, ge=0, description="database connections kept open")
    store_pool_max: int = Field(default=10, ge=1, description="database connections at most")
    store_connect_timeout_s: float = Field(default=5.0, gt=0.0)
    store_pool_timeout_s: float = Field(
        default=10.0, gt=0.0, description="wait for a free connection before answering 503"
    )
    store_statement_timeout_s: float = Field(
        default=30.0, gt=0.0, description="per statement (searches, writes) before 503"
    )
    store_maintenance_timeout_s: float = Field(
        default=3600.0, gt=0.0, description="per rebuild statement (refits, index changes)"
    )
    store_health_interval_s: float = Field(
        default=2.0, gt=0.0, description="how often /ready re-checks the database"
    )

    # Collections (documents under data_dir/collections).
    max_documents_per_request: int = Field(
        default=1000, ge=1, description="documents in one JSON body (413 beyond)"
    )
    max_ndjson_line_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="bytes per NDJSON line; an NDJSON stream itself may be of any length",
    )
    max_document_id_chars: int = Field(default=256, ge=1)
    index_batch_documents: int = Field(
        default=128, ge=1, description="documents per encoder submission while indexing"
    )
    index_queue_timeout_s: float = Field(
        default=30.0, ge=0.0, description="how long indexing waits for room in the encoder queue"
    )
    max_collections: int = Field(default=256, ge=1)
    max_search_k: int = Field(default=1000, ge=1)
    max_filter_keys: int = Field(default=16, ge=1, description="keys in a search filter")
    max_filter_key_chars: int = Field(default=128, ge=1)
    max_filter_value_chars: int = Field(
        default=1024, ge=1, description="characters of a string value in a search filter"
    )
    search_filter_oversample: int = Field(
        default=10, ge=1, description="a filtered search first fetches k times this"
    )
    search_max_candidates: int = Field(
        default=10_000, ge=1, description="beyond this, a search scans the matching documents"
    )
    index_snapshot_every: int = Field(
        default=10_000, ge=1, description="changes between FAISS snapshots"
    )
    index_rebuild_dead_fraction: float = Field(
        default=0.25, gt=0.0, description="hnsw tombstones per live document that force a rebuild"
    )
    index_repair_every_s: float = Field(
        default=60.0,
        ge=0.0,
        description="a collection whose index failed (it answers by exact scan meanwhile) "
        "retries building it after a write this often",
    )
    index_default_kind: Literal["flat", "hnsw", "ivf"] = "flat"
    lexical_analyzer: AnalyzerName = Field(
        default="english",
        description="the lexical (BM25) index's analyser for new collections: english "
        "(Snowball stemming, stop words), simple, cjk_bigram (Chinese), jieba (Chinese words)",
    )
    search_default_mode: Literal["dense", "lexical", "hybrid"] = Field(
        default="hybrid",
        description="the search mode of collections that set none (the winner on SciFact's "
        "train queries; docs/collections.md)",
    )
    search_fusion_method: Literal["rrf", "weighted"] = Field(
        default="weighted",
        description="hybrid search's fusion: weighted (alpha * dense + (1 - alpha) * lexical, "
        "min-max normalised; tuned on SciFact's train queries) or rrf",
    )
    search_rrf_k: int = Field(default=60, ge=1, le=10_000)
    search_fusion_normalization: Literal["minmax", "cosine"] = Field(
        default="minmax",
        description="weighted fusion's scale: minmax (each list over its candidates) or "
        "cosine (dense cosines as they are, BM25 over the query's best); `simsvc tune-search` "
        "picks per collection",
    )
    search_fusion_alpha: float = Field(
        default=0.4, ge=0.0, le=1.0, description="weight of the dense list in hybrid search"
    )
    search_fusion_candidates: int = Field(
        default=100, ge=1, description="how deep each list is read before fusing"
    )
    max_fusion_candidates: int = Field(default=1000, ge=1)
    max_rerank_candidates: int = Field(
        default=100, ge=1, description="results a search may rescore with the cross-encoder"
    )
    index_threads: int = Field(
        default=1,
        ge=0,
        description="FAISS (OpenMP) threads per search; 0 = all cores. Searches already run "
        "concurrently, one per request: more threads per query only spin on a busy CPU",
    )
    hnsw_m: int = Field(default=32, ge=2)
    hnsw_ef_construction: int = Field(default=200, ge=1)
    hnsw_ef_search: int = Field(default=512, ge=1)
    ivf_nlist: int = Field(default=0, ge=0, description="0: about sqrt(documents)")
    ivf_nprobe: int = Field(default=48, ge=1)
    # Upper bounds of the index parameters a collection may ask for: an admin request can
    # make an index slow, never unusable (each is capped by index.PARAM_RANGES).
    hnsw_max_m: int = Field(default=64, ge=2, le=PARAM_RANGES["m"][1])
    hnsw_max_ef_construction: int = Field(default=1024, ge=1, le=PARAM_RANGES["ef_construction"][1])
    hnsw_max_ef_search: int = Field(default=4096, ge=1, le=PARAM_RANGES["ef_search"][1])
    ivf_max_nlist: int = Field(default=65536, ge=1, le=PARAM_RANGES["nlist"][1])
    ivf_max_nprobe: int = Field(default=4096, ge=1, le=PARAM_RANGES["nprobe"][1])
    ivf_min_documents: int = Field(
        default=1000, ge=1, description="an ivf collection is searched exactly until this size"
    )
    ivf_retrain_growth: float = Field(
        default=4.0, gt=1.0, description="retrain ivf lists when the collection grew this much"
    )

    # Cross-encoder (a bundle built with --cross-model): its own batcher and limits.
    max_rerank_texts: int = Field(default=128, ge=1, description="texts per /rerank (413)")
    cross_max_batch_tokens: int = Field(
        default=8192, ge=1, description="padded tokens per cross-encoder batch"
    )
    cross_max_batch_size: int = Field(default=32, ge=1, description="pairs per batch")
    cross_max_queue_pairs: int = Field(
        default=1024, ge=1, description="pairs waiting for the cross-encoder (429 beyond)"
    )

    # Pair head decision threshold override (None: the bundle's).
    similar_threshold: float | None = Field(default=None, ge=0.0, le=1.0)

    # Access: JSON list of {"name", "key", "scopes": ["read"|"write"|"admin"]}.
    api_keys: list[ApiKey] = Field(default_factory=list)

    onnx_provider: Literal["cpu"] = "cpu"

    @model_validator(mode="after")
    def _defaults_within_bounds(self) -> Settings:
        """The default index parameters must be ones a request could ask for."""
        for kind, name in (
            ("hnsw", "m"),
            ("hnsw", "ef_construction"),
            ("hnsw", "ef_search"),
            ("ivf", "nlist"),
            ("ivf", "nprobe"),
        ):
            value, bound = getattr(self, f"{kind}_{name}"), getattr(self, f"{kind}_max_{name}")
            if value > bound:
                raise ValueError(f"{kind}_{name}={value} exceeds {kind}_max_{name}={bound}")
        return self

    def index_bounds(self) -> dict[str, int]:
        """The largest value a request may give each index parameter."""
        return {
            "m": self.hnsw_max_m,
            "ef_construction": self.hnsw_max_ef_construction,
            "ef_search": self.hnsw_max_ef_search,
            "nlist": self.ivf_max_nlist,
            "nprobe": self.ivf_max_nprobe,
            "pq_m": PARAM_RANGES["pq_m"][1],
            "refine": PARAM_RANGES["refine"][1],
        }
