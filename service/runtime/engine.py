"""The engine: tokenizer, dynamic batcher, whitening and pair head behind two calls, and the
bundle's cross-encoder (its own batcher) when it has one.

Usable without the HTTP layer (benchmarks, the CLI, other servers). Blocking work runs off
the event loop: tokenization in a worker thread, inference on the batcher's thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from service.errors import (
    NoCrossEncoderError,
    TextTooLongError,
    TooManyTextsError,
    ValidationError,
)
from service.runtime.assembly import (
    CrossBatchObserver,
    EngineOptions,
    cross_from_bundle,
    encoder_from_bundle,
    make_batcher,
    reranker_from_bundle,
)
from service.runtime.batching import BatchObserver, DynamicBatcher
from service.runtime.bundle import Bundle, load_bundle
from service.runtime.cross import CrossScorer, CrossScores, Direction, PairInput
from service.runtime.encoder import EncoderCore, Tokenized
from service.runtime.head import PairHead, make_views
from service.runtime.prompts import Prompts, Role
from service.runtime.stats import l2_normalize
from service.runtime.types import FloatArray, Timings
from service.runtime.whitening import Whitening


class EngineObserver(Protocol):
    """Receives per-request encoder figures (the metrics module implements it)."""

    def tokenized(self, texts: int, tokens: int, truncated: int, seconds: float) -> None: ...

    def pairs_scored(self, probabilities: np.ndarray, similar: np.ndarray) -> None: ...


class EncoderObserver(EngineObserver, BatchObserver, Protocol):
    """What watches an engine's encoder: its requests and its batcher."""


class _NullEngineObserver:
    def tokenized(self, texts: int, tokens: int, truncated: int, seconds: float) -> None:
        pass

    def pairs_scored(self, probabilities: np.ndarray, similar: np.ndarray) -> None:
        pass


@dataclass(frozen=True)
class Embeddings:
    """Vectors of a request's texts in order, with token counts and stage timings."""

    vectors: FloatArray
    tokens: int
    truncated: int
    timings: Timings


@dataclass(frozen=True)
class PairScores:
    """Per pair: whitened cosine, and the head's probability and verdict when a head exists."""

    scores: FloatArray
    probabilities: np.ndarray | None
    similar: np.ndarray | None
    tokens: int
    timings: Timings


@dataclass(frozen=True)
class EngineLimits:
    """Request limits the engine enforces (all settings)."""

    max_texts: int = 256
    max_pairs: int = 128
    max_chars: int = 20_000


class Engine:
    """Embeds texts and scores pairs with one bundle's encoder, whitening and head."""

    def __init__(
        self,
        core: EncoderCore,
        batcher: DynamicBatcher,
        *,
        model_name: str,
        pooling: str,
        whitening: Whitening,
        head: PairHead | None = None,
        limits: EngineLimits | None = None,
        similar_threshold: float | None = None,
        observer: EngineObserver | None = None,
        inline_tokenize_chars: int = 2000,
        cross: CrossScorer | None = None,
        prompts: Prompts | None = None,
        reranker: CrossScorer | None = None,
    ) -> None:
        if pooling not in core.outputs:
            raise ValueError(f"pooling {pooling!r} is not among the encoder outputs {core.outputs}")
        if whitening.dims_in != core.dims:
            raise ValueError(
                f"whitening expects {whitening.dims_in}-dim vectors, encoder yields {core.dims}"
            )
        self.core = core
        self.batcher = batcher
        self.model_name = model_name
        self.pooling = pooling
        self.whitening = whitening
        self.head = head
        self.limits = limits or EngineLimits()
        self.threshold = (
            similar_threshold
            if similar_threshold is not None
            else (head.threshold if head else 0.5)
        )
        self._observer: EngineObserver = observer or _NullEngineObserver()
        self._inline_chars = inline_tokenize_chars
        self.cross = cross
        self.prompts = prompts or Prompts()
        """The bundle's prompts, put before texts (never token ids, never the cross-encoder's
        pairs) so the encoder reads them as it was trained and fitted to."""
        self.reranker = reranker
        """The relevance reranker: search `rerank` and /rerank use it when present."""

    @classmethod
    def assemble(
        cls,
        core: EncoderCore,
        options: EngineOptions,
        *,
        model_name: str,
        pooling: str,
        whitening: Whitening | None = None,
        head: PairHead | None = None,
        cross: CrossScorer | None = None,
        reranker: CrossScorer | None = None,
        observer: EncoderObserver | None = None,
        prompts: Prompts | None = None,
    ) -> Engine:
        """An encoder core behind a batcher, with the options' limits (any core: the
        bundle's ONNX session, or a fake one in tests)."""
        batcher = make_batcher(
            options,
            core.infer,
            max(options.max_batch_tokens, core.max_length),
            options.max_batch_size,
            options.max_queue_texts,
            observer,
        )
        return cls(
            core,
            batcher,
            model_name=model_name,
            pooling=pooling,
            whitening=whitening or Whitening.identity(core.dims),
            head=head,
            limits=EngineLimits(options.max_texts, options.max_pairs, options.max_chars),
            similar_threshold=options.similar_threshold,
            observer=observer,
            cross=cross,
            prompts=prompts,
            reranker=reranker,
        )

    @classmethod
    def from_bundle(
        cls,
        bundle: Bundle | Path,
        options: EngineOptions | None = None,
        *,
        observer: EncoderObserver | None = None,
        cross_observer: CrossBatchObserver | None = None,
    ) -> Engine:
        """The engine of a bundle (a directory is loaded and verified first): its ONNX
        session, tokenizer, whitening and head, and its cross-encoder when it has one.
        Not started: call `start()`."""
        if not isinstance(bundle, Bundle):
            bundle = load_bundle(bundle)
        options = options or EngineOptions()
        manifest = bundle.manifest
        return cls.assemble(
            encoder_from_bundle(bundle, options),
            options,
            model_name=manifest.source.model,
            pooling=manifest.pooling,
            whitening=bundle.whitening,
            head=bundle.head,
            cross=cross_from_bundle(bundle, options, cross_observer),
            reranker=reranker_from_bundle(bundle, options, cross_observer),
            observer=observer,
            prompts=bundle.prompts,
        )

    @property
    def dims(self) -> int:
        """Dimension of the vectors the service returns by default."""
        return self.whitening.dims_out

    def start(self) -> None:
        self.batcher.start()
        for scorer in (self.cross, self.reranker):
            if scorer is not None:
                scorer.start()

    def stop(self) -> None:
        self.batcher.stop()
        for scorer in (self.cross, self.reranker):
            if scorer is not None:
                scorer.stop()

    def _check_texts(self, texts: Sequence[str], limit: int, what: str) -> None:
        if not texts:
            raise ValidationError(f"no {what} given")
        if len(texts) > limit:
            raise TooManyTextsError(f"{len(texts)} {what} in one request; the limit is {limit}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValidationError(f"{what} {i} is not a string")
            if len(text) > self.limits.max_chars:
                raise TextTooLongError(
                    f"text {i} has {len(text)} characters; the limit is {self.limits.max_chars}"
                )

    async def tokenize(self, texts: Sequence[str], truncate: bool = True) -> list[Tokenized]:
        """Tokenize; with `truncate=False` a too-long text is an error.

        Short inputs are tokenized in place (tens of microseconds, less than a hop to a
        worker thread); longer ones off the event loop.
        """
        started = time.perf_counter()
        if sum(len(t) for t in texts) <= self._inline_chars:
            tokens = self.core.tokenize(texts)
        else:
            tokens = await asyncio.to_thread(self.core.tokenize, texts)
        seconds = time.perf_counter() - started
        truncated = sum(1 for t in tokens if t.truncated)
        self._observer.tokenized(len(tokens), sum(len(t) for t in tokens), truncated, seconds)
        if truncated and not truncate:
            first = next(i for i, t in enumerate(tokens) if t.truncated)
            raise TextTooLongError(
                f"text {first} is longer than the model's {self.core.max_length} tokens and "
                "truncate is false"
            )
        return tokens

    def _resolve(self, pooling: str | None, whiten: bool | None) -> tuple[str, bool]:
        pooling = pooling or self.pooling
        if pooling not in self.core.outputs:
            raise ValidationError(
                f"unknown pooling {pooling!r}; this model offers {list(self.core.outputs)}",
                param="pooling",
            )
        if whiten is None:
            whiten = pooling == self.pooling and self.whitening.fitted
        elif whiten and pooling != self.pooling:
            raise ValidationError(
                f"the whitening was fitted on {self.pooling!r} vectors; ask for whiten=false "
                f"with pooling {pooling!r}",
                param="whiten",
            )
        return pooling, whiten

    async def _encode(
        self, texts: Sequence[str], truncate: bool
    ) -> tuple[dict[str, FloatArray], list[Tokenized], Timings]:
        """Raw pooled vectors of texts, through the tokenizer and the batcher."""
        started = time.perf_counter()
        tokens = await self.tokenize(texts, truncate)
        tokenize_seconds = time.perf_counter() - started
        result = await self.batcher.submit(tokens)
        timings = Timings(tokenize_seconds, result.queue_seconds, result.inference_seconds)
        return result.vectors, tokens, timings

    def _check_ids(self, ids: Sequence[Sequence[int]]) -> None:
        if not ids:
            raise ValidationError("no texts given", param="input")
        if len(ids) > self.limits.max_texts:
            raise TooManyTextsError(
                f"{len(ids)} texts in one request; the limit is {self.limits.max_texts}"
            )
        vocab = self.core.vocab_size
        for i, row in enumerate(ids):
            if not row:
                raise ValidationError(f"input {i} has no token ids", param="input")
            if len(row) > self.limits.max_chars:
                raise TextTooLongError(
                    f"input {i} has {len(row)} token ids; the limit is {self.limits.max_chars}"
                )
            bad = next((t for t in row if not 0 <= t < vocab), None)
            if bad is not None:
                raise ValidationError(
                    f"input {i} has token id {bad}, outside this model's vocabulary of "
                    f"{vocab} (ids 0..{vocab - 1})",
                    param="input",
                )

    def resolve_output(
        self, pooling: str | None, whiten: bool | None, dims: int | None
    ) -> tuple[str, bool]:
        """The pooling and whitening a request gets; raises ValidationError for a pooling
        the model lacks, whitening on another pooling, or dims out of range."""
        pooling, whiten = self._resolve(pooling, whiten)
        out_dims = self.whitening.dims_out if whiten else self.core.dims
        if dims is not None and not 1 <= dims <= out_dims:
            raise ValidationError(
                f"dimensions must be in 1..{out_dims}, got {dims}", param="dimensions"
            )
        return pooling, whiten

    def _vectors(
        self,
        pooled: dict[str, FloatArray],
        tokens: Sequence[Tokenized],
        timings: Timings,
        pooling: str,
        whiten: bool,
        normalize: bool,
        dims: int | None,
    ) -> Embeddings:
        raw = pooled[pooling]
        if whiten:
            vectors = self.whitening.apply(raw, normalize=normalize, dims=dims)
        else:
            vectors = raw if dims is None else np.ascontiguousarray(raw[:, :dims])
            if normalize:
                vectors = l2_normalize(vectors)
        return Embeddings(
            vectors=vectors,
            tokens=sum(len(t) for t in tokens),
            truncated=sum(1 for t in tokens if t.truncated),
            timings=timings,
        )

    async def embed(
        self,
        texts: Sequence[str],
        *,
        pooling: str | None = None,
        whiten: bool | None = None,
        normalize: bool = True,
        truncate: bool = True,
        dims: int | None = None,
        limit: int | None = None,
        prompt_name: str | None = None,
        role: Role = "default",
    ) -> Embeddings:
        """Vectors of `texts`: pooled, whitened (bundle pooling only), cut to `dims`, normalised.

        Each text gets the prompt `prompt_name` names, else the one the bundle gives `role`,
        before tokenizing: the token limit counts it. Limits count the text as sent."""
        self._check_texts(texts, limit or self.limits.max_texts, "texts")
        pooling, whiten = self.resolve_output(pooling, whiten, dims)
        prompted = self.prompts.apply(texts, prompt_name, role)
        pooled, tokens, timings = await self._encode(prompted, truncate)
        return self._vectors(pooled, tokens, timings, pooling, whiten, normalize, dims)

    async def embed_ids(
        self, ids: Sequence[Sequence[int]], *, dims: int | None = None
    ) -> Embeddings:
        """Whitened, normalised vectors of texts given as token ids of the model's vocabulary
        (without special tokens; they are added as for text). Too long: truncated."""
        self._check_ids(ids)
        pooling, whiten = self.resolve_output(None, None, dims)
        tokens = self.core.from_ids(ids)
        self._observer.tokenized(
            len(tokens), sum(len(t) for t in tokens), sum(t.truncated for t in tokens), 0.0
        )
        result = await self.batcher.submit(tokens)
        timings = Timings(0.0, result.queue_seconds, result.inference_seconds)
        return self._vectors(result.vectors, tokens, timings, pooling, whiten, True, dims)

    async def similarity(
        self, pairs: Sequence[tuple[str, str]], truncate: bool = True
    ) -> PairScores:
        """Whitened cosine of each pair, plus the head's probability when the bundle has one.
        Both texts take the query prompt (the whitening and the head were fitted so)."""
        if not pairs:
            raise ValidationError("no pairs given")
        if len(pairs) > self.limits.max_pairs:
            raise TooManyTextsError(
                f"{len(pairs)} pairs in one request; the limit is {self.limits.max_pairs}"
            )
        index: dict[str, int] = {}
        for a, b in pairs:
            index.setdefault(a, len(index))
            index.setdefault(b, len(index))
        texts = list(index)
        self._check_texts(texts, 2 * self.limits.max_pairs, "texts")
        prompted = self.prompts.apply(texts, None, "query")
        pooled, tokens, timings = await self._encode(prompted, truncate)
        raw = pooled[self.pooling]
        white = self.whitening.apply(raw)
        ia = np.fromiter((index[a] for a, _ in pairs), dtype=np.int64, count=len(pairs))
        ib = np.fromiter((index[b] for _, b in pairs), dtype=np.int64, count=len(pairs))
        scores = np.einsum("ij,ij->i", white[ia], white[ib]).astype(np.float32)
        probabilities = similar = None
        if self.head is not None:
            probabilities = self.head.probability(make_views(raw, self.whitening, ia, ib, white))
            similar = probabilities >= self.threshold
            self._observer.pairs_scored(probabilities, similar)
        return PairScores(scores, probabilities, similar, sum(len(t) for t in tokens), timings)

    async def cross_similarity(
        self,
        pairs: Sequence[PairInput],
        *,
        truncate: bool = True,
        direction: Direction = "right",
        limit: int | None = None,
        similarity: bool = False,
        relevance: bool = False,
    ) -> CrossScores:
        """Cross-encoder scores of pairs (b may be None: a single text), within the limits.

        The request's own limits come first: a bad request is a bad request whatever the
        bundle holds. `similarity` marks symmetric pair scoring (/v1/similarity): a bundle
        built with a symmetric cross-encoder then reads each pair in both orders. `relevance`
        marks (query, document) ranking (/rerank, search rerank): the bundle's reranker
        scores them when it has one."""
        limit = limit or self.limits.max_pairs
        if not pairs:
            raise ValidationError("no pairs given")
        if len(pairs) > limit:
            raise TooManyTextsError(f"{len(pairs)} pairs in one request; the limit is {limit}")
        texts = list(dict.fromkeys(t for pair in pairs for t in pair if t is not None))
        self._check_texts(texts, 2 * limit, "texts")
        scorer = self.ranker if relevance else self.cross
        if scorer is None:
            raise NoCrossEncoderError(
                "this bundle has no cross-encoder: use mode 'bi', or build the bundle with "
                "`simsvc build ... --cross-model CHECKPOINT`"
            )
        return await scorer.score(
            pairs,
            truncate=truncate,
            direction=direction,
            both_orders=similarity and scorer.symmetric,
        )

    @property
    def ranker(self) -> CrossScorer | None:
        """What reranks (query, document) pairs: the reranker, else the cross-encoder."""
        return self.reranker if self.reranker is not None else self.cross

    async def warmup(self) -> None:
        """Run one small batch so the first request does not pay for lazy initialisation."""
        await self.embed(["warm-up", "a second, somewhat longer warm-up text"])
        for scorer in (self.cross, self.reranker):
            if scorer is not None:
                await scorer.score([("warm-up", "a second, somewhat longer warm-up text")])
