"""Every Prometheus object of the service, in one place, on a registry owned by the app.

Names carry the `simsvc_` prefix and base units; labels are bounded (route templates,
methods, status codes, error types, collection names), never texts or ids.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
STAGE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
REBUILD_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
PROBABILITY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


class _StageMetrics:
    """The stage observer methods, shared by the encoder's metrics and the cross-encoder's:
    both name their objects alike (queue_depth_gauge, queue_wait_seconds, ...)."""

    queue_depth_gauge: Gauge
    queue_wait_seconds: Histogram
    inference_seconds: Histogram
    batch_size: Histogram
    batch_tokens: Histogram
    tokenize_seconds: Histogram
    tokens: Counter
    truncated: Counter
    queue_work_gauge: Gauge
    abandoned_texts: Counter
    queue_capacity: Gauge

    def _stage_instruments(self, r: CollectorRegistry, prefix: str, item: str, model: str) -> None:
        """The stage instruments, named `{prefix}...`: one set per model (the encoder's
        `simsvc_*`, the cross-encoder's `simsvc_cross_*`), counting `item`s (texts, pairs)."""
        Item = item.capitalize()
        self.tokenize_seconds = Histogram(
            f"{prefix}tokenize_seconds",
            "Tokenization time per request.",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            f"{prefix}queue_wait_seconds",
            f"Time a request's {item} waited for the {model}.",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            f"{prefix}inference_seconds",
            f"{model.capitalize()} time per batch.",
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            f"{prefix}batch_size", f"{Item} per {model} batch.", buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            f"{prefix}batch_tokens",
            f"Padded tokens per {model} batch.",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.queue_depth_gauge = Gauge(
            f"{prefix}queue_depth", f"{Item} accepted and not yet run.", registry=r
        )
        self.queue_capacity = Gauge(
            f"{prefix}queue_capacity",
            f"{Item} the {model} queue accepts before answering 429.",
            registry=r,
        )
        self.queue_work_gauge = Gauge(
            f"{prefix}queue_work_seconds",
            f"Estimated seconds of {model} work queued (tokens over the measured throughput).",
            registry=r,
        )
        self.abandoned_texts = Counter(
            f"{prefix}abandoned_{item}",
            f"{Item} dropped from the queue unrun because their client went away.",
            registry=r,
        )
        self.tokens = Counter(f"{prefix}tokens", f"Tokens run through the {model}.", registry=r)
        self.truncated = Counter(
            f"{prefix}truncated", f"{Item} cut to the {model}'s max length.", registry=r
        )

    # BatchObserver
    def queue_depth(self, depth: int) -> None:
        self.queue_depth_gauge.set(depth)

    def queue_wait(self, seconds: float) -> None:
        self.queue_wait_seconds.observe(seconds)

    def queue_work(self, seconds: float) -> None:
        self.queue_work_gauge.set(seconds)

    def abandoned(self, items: int) -> None:
        if items:
            self.abandoned_texts.inc(items)

    def batch(self, size: int, padded_tokens: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_tokens.observe(padded_tokens)
        self.inference_seconds.observe(seconds)

    # EngineObserver / CrossObserver
    def tokenized(self, texts: int, tokens: int, truncated: int, seconds: float) -> None:
        self.tokenize_seconds.observe(seconds)
        self.tokens.inc(tokens)
        if truncated:
            self.truncated.inc(truncated)


class Metrics(_StageMetrics):
    """The service's metrics; implements the batcher's, engine's and collections' observers."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "simsvc_requests", "HTTP requests answered.", ["route", "method", "status"], registry=r
        )
        self.request_duration = Histogram(
            "simsvc_request_duration_seconds",
            "HTTP request latency, from first byte in to response ready.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "simsvc_errors", "Errors answered to clients, by type.", ["error_type"], registry=r
        )
        self._stage_instruments(r, "simsvc_", "texts", "encoder")
        self.queue_work_limit = Gauge(
            "simsvc_queue_work_limit_seconds",
            "Seconds of queued work beyond which requests get 429.",
            registry=r,
        )
        self.model_info = Info("simsvc_model", "The loaded model bundle.", registry=r)
        self.anisotropy = Gauge(
            "simsvc_model_anisotropy_mean_cosine",
            "Mean cosine of random pairs of the fit corpus, before and after whitening.",
            ["stage"],
            registry=r,
        )
        self.pairs_scored_total = Counter(
            "simsvc_pairs_scored", "Pairs scored by the pair head.", registry=r
        )
        self.pairs_similar_total = Counter(
            "simsvc_pairs_similar", "Pairs the head judged similar.", registry=r
        )
        self.similar_share = Gauge(
            "simsvc_similar_share", "Share of scored pairs judged similar since start.", registry=r
        )
        self.probability = Histogram(
            "simsvc_similarity_probability",
            "Pair-head probabilities.",
            buckets=PROBABILITY_BUCKETS,
            registry=r,
        )
        self.ready = Gauge("simsvc_ready", "1 when the model is loaded and warm.", registry=r)
        self.index_documents = Gauge(
            "simsvc_index_documents", "Documents stored per collection.", ["collection"], registry=r
        )
        self.search_seconds = Histogram(
            "simsvc_search_seconds",
            "Collection search time (index and store, after encoding the query), by index kind.",
            ["kind"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.lexical_terms_gauge = Gauge(
            "simsvc_lexical_terms",
            "Term occurrences in a collection's lexical (BM25) index: its size.",
            ["collection"],
            registry=r,
        )
        self.search_request_seconds = Histogram(
            "simsvc_search_request_seconds",
            "Collection search time by mode (dense, lexical, hybrid), query encoding, fusion "
            "and reranking included.",
            ["mode"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.index_rebuild_seconds = Histogram(
            "simsvc_index_rebuild_seconds",
            "Time to rebuild a collection's index from its stored vectors, by reason.",
            ["reason"],
            buckets=REBUILD_BUCKETS,
            registry=r,
        )
        self._scored = 0
        self._similar = 0
        self.cross = CrossMetrics(r)

    def prime(
        self,
        requests: Iterable[tuple[str, str, str]],
        error_types: Iterable[str],
        index_kinds: Iterable[str] = (),
        rebuild_reasons: Iterable[str] = (),
        search_modes: Iterable[str] = (),
    ) -> None:
        """Create, at 0, the labelled series an alert or a dashboard reads with `rate()` or
        `increase()`.

        A series that appears only with its first increment is invisible to `rate()` and
        `increase()` for that increment: the first burst of 429s or 5xx would never fire an
        alert. `requests` are (route, method, status) triples: they prime the request
        counter (the error-rate alert, the requests panel), one series each. The latency
        histogram is not primed: its panels and alert read quantiles of what was observed,
        and at 20 series a triple it was most of the page.
        """
        for labels in requests:
            self.requests.labels(*labels)
        for error_type in error_types:
            self.errors.labels(error_type=error_type)
        for reason in rebuild_reasons:  # the dashboard's increase() of rebuilds by reason
            self.index_rebuild_seconds.labels(reason=reason)
        # `index_kinds` and `search_modes` label histograms read only as quantiles of what
        # was observed: priming them would add about 20 empty series each and serve no query.
        del index_kinds, search_modes

    def exposition(self) -> bytes:
        """The /metrics page: the registry without the `_created` series (one per counter,
        histogram and labelled child, a timestamp no dashboard or alert reads). Filtered here,
        not by `prometheus_client.disable_created_metrics()`, which is process-wide."""
        return generate_latest(self.scrape_view())  # type: ignore[arg-type]

    def scrape_view(self) -> _WithoutCreated:
        """What a scrape reads (the registry less `_created`), for the /metrics route and for
        `simsvc serve --metrics-port`'s own server alike."""
        return _WithoutCreated(self.registry)

    # CollectionObserver
    def documents(self, collection: str, count: int) -> None:
        self.index_documents.labels(collection=collection).set(count)

    def lexical_terms(self, collection: str, terms: int) -> None:
        self.lexical_terms_gauge.labels(collection=collection).set(terms)

    def forget(self, collection: str) -> None:
        for gauge in (self.index_documents, self.lexical_terms_gauge):
            with contextlib.suppress(KeyError):
                gauge.remove(collection)

    # SearchObserver
    def search_request(self, mode: str, seconds: float) -> None:
        self.search_request_seconds.labels(mode=mode).observe(seconds)

    def searched(self, kind: str, seconds: float) -> None:
        self.search_seconds.labels(kind=kind).observe(seconds)

    def rebuilt(self, reason: str, seconds: float) -> None:
        self.index_rebuild_seconds.labels(reason=reason).observe(seconds)

    def pairs_scored(self, probabilities: np.ndarray, similar: np.ndarray) -> None:
        for p in probabilities:
            self.probability.observe(float(p))
        n, s = len(probabilities), int(np.count_nonzero(similar))
        self.pairs_scored_total.inc(n)
        self.pairs_similar_total.inc(s)
        self._scored += n
        self._similar += s
        self.similar_share.set(self._similar / self._scored if self._scored else 0.0)


class _WithoutCreated:
    """A registry's collection with the `_created` samples left out."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        for metric in self.registry.collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


class CrossMetrics(_StageMetrics):
    """The cross-encoder's own stage metrics (`simsvc_cross_*`), beside the bi-encoder's.

    Implements the batcher's observer for the second batcher, and the cross scorer's.
    """

    def __init__(self, r: CollectorRegistry) -> None:
        self._stage_instruments(r, "simsvc_cross_", "pairs", "cross-encoder")
        self.pairs_scored_total = Counter(
            "simsvc_cross_pairs_scored", "Pairs scored by the cross-encoder.", registry=r
        )
        self.probability = Histogram(
            "simsvc_cross_probability",
            "Calibrated cross-encoder probabilities.",
            buckets=PROBABILITY_BUCKETS,
            registry=r,
        )

    # CrossObserver
    def pairs_scored(self, probabilities: np.ndarray, similar: np.ndarray) -> None:
        for p in probabilities:
            self.probability.observe(float(p))
        self.pairs_scored_total.inc(len(probabilities))
