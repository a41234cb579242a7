"""Request and response bodies. Size limits are settings, enforced by the engine."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.runtime.lexical import AnalyzerName


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Pair(_Strict):
    a: str
    b: str


class SimilarityRequest(_Strict):
    pairs: list[Pair]
    truncate: bool = True
    mode: Literal["bi", "cross"] = Field(
        default="bi",
        description="bi: two vectors and the pair head; cross: the bundle's cross-encoder "
        "reads both texts at once (424 no_cross_encoder without one)",
    )


class PairResult(BaseModel):
    score: float = Field(
        description="bi: cosine of the whitened vectors; cross: the cross-encoder's own "
        "probability, sigmoid of its logit"
    )
    probability: float | None = Field(
        description="bi: the pair head's probability (null without a head); cross: the "
        "calibrated probability"
    )
    similar: bool | None = Field(description="probability >= threshold; null without a head")


class SimilarityResponse(BaseModel):
    model: str
    results: list[PairResult]


class TEISimilarityInputs(_Strict):
    source_sentence: str
    sentences: list[str]


class TEISimilarityRequest(BaseModel):
    """text-embeddings-inference's /similarity body."""

    inputs: TEISimilarityInputs
    truncate: bool = True


class EmbedRequest(BaseModel):
    """text-embeddings-inference's /embed body, plus `pooling`, `whiten` and `dimensions`."""

    inputs: str | list[str]
    normalize: bool = True
    truncate: bool = True
    pooling: Literal["cls", "pooler", "mean", "first_last_avg"] | None = None
    whiten: bool | None = Field(
        default=None, description="default: whiten when the pooling is the bundle's"
    )
    dimensions: int | None = Field(default=None, ge=1)


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI's /v1/embeddings body (token-id inputs are not accepted)."""

    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


# Collections.

Scalar = str | int | float | bool | None


class DocumentIn(_Strict):
    """One document to index; `id` is the upsert key."""

    id: str
    text: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class DocumentsRequest(_Strict):
    """A JSON body of documents (or send the same objects as NDJSON lines)."""

    documents: list[DocumentIn]


class IndexedResponse(BaseModel):
    indexed: int = Field(description="documents written by this request")
    count: int = Field(description="documents in the collection afterwards")


class IndexOptions(_Strict):
    kind: Literal["flat", "hnsw", "ivf"] | None = Field(
        default=None, description="default: the current kind, or the service's default"
    )
    params: dict[str, int] = Field(
        default_factory=dict,
        description="hnsw: m, ef_construction, ef_search; ivf: nlist (0: auto), nprobe",
    )


class LexicalOptions(_Strict):
    analyzer: AnalyzerName | None = Field(
        default=None,
        description="english: Snowball stemming and stop words; simple: lower-cased words; "
        "cjk_char / cjk_bigram / cjk_uni_bigram / jieba: Chinese (characters / bigrams / "
        "both / words). A change re-analyses the "
        "stored texts.",
    )


class FusionOptions(_Strict):
    """How hybrid search combines its two lists (unset fields: the collection's defaults)."""

    method: Literal["rrf", "weighted"] | None = Field(
        default=None,
        description="rrf: reciprocal-rank fusion; weighted: alpha * dense + (1 - alpha) * "
        "lexical over min-max normalised scores",
    )
    rrf_k: int | None = Field(default=None, ge=1, le=10_000, description="RRF's constant")
    alpha: float | None = Field(
        default=None, ge=0.0, le=1.0, description="weight of the dense list"
    )
    candidates: int | None = Field(
        default=None, ge=1, description="how deep each list is read before fusing"
    )

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class SearchDefaultsIn(_Strict):
    mode: Literal["dense", "lexical", "hybrid"] | None = None
    fusion: FusionOptions = Field(default_factory=FusionOptions)


class CollectionOptions(_Strict):
    index: IndexOptions = Field(default_factory=IndexOptions)
    dims: int | None = Field(
        default=None, ge=1, description="keep the first dims whitened components"
    )
    lexical: LexicalOptions = Field(default_factory=LexicalOptions)
    search: SearchDefaultsIn | None = Field(
        default=None, description="the collection's search defaults (mode, fusion)"
    )


class RefitRequest(_Strict):
    source: Literal["collection", "bundle", "identity"] = Field(
        default="collection",
        description="fit on the collection's documents, go back to the bundle's, or none",
    )


class RerankOptions(_Strict):
    candidates: int = Field(
        ge=1, description="how many of the top results the cross-encoder rescores"
    )


class SearchRequest(_Strict):
    query: str = Field(min_length=1)
    k: int = Field(default=10, ge=1)
    filter: dict[str, Scalar] = Field(
        default_factory=dict, description="metadata equality on every key"
    )
    mode: Literal["dense", "lexical", "hybrid"] | None = Field(
        default=None,
        description="dense: nearest whitened vectors; lexical: BM25; hybrid: both, fused. "
        "Default: the collection's",
    )
    fusion: FusionOptions | None = None
    rerank: RerankOptions | None = Field(
        default=None, description="rescore the top results with the bundle's cross-encoder"
    )
    explain: bool = Field(
        default=False, description="say which lists each result came from, and its rank there"
    )


class SearchSource(BaseModel):
    rank: int
    score: float


class SearchHit(BaseModel):
    id: str
    score: float = Field(
        description="dense: cosine of the whitened vectors; lexical: BM25; hybrid: the fused "
        "score; reranked: the cross-encoder's probability"
    )
    text: str
    metadata: dict[str, Any]
    sources: dict[str, SearchSource] | None = Field(
        default=None, description='with "explain": dense, lexical and rerank rank and score'
    )


class SearchResponse(BaseModel):
    mode: Literal["dense", "lexical", "hybrid"]
    results: list[SearchHit]


class DocumentOut(BaseModel):
    id: str
    text: str
    metadata: dict[str, Any]


# Cross-encoder routes, in text-embeddings-inference's shapes.


class RerankRequest(BaseModel):
    """text-embeddings-inference's /rerank body."""

    query: str
    texts: list[str]
    raw_scores: bool = Field(default=False, description="true: the logit; false: its sigmoid")
    return_text: bool = False
    truncate: bool = True
    truncation_direction: Literal["right", "left", "Right", "Left"] = "right"


class Rank(BaseModel):
    index: int = Field(ge=0)
    score: float
    text: str | None = Field(default=None, description="present when return_text is true")


class PredictRequest(BaseModel):
    """text-embeddings-inference's /predict body: a text, a pair [a, b], or a batch of both."""

    inputs: str | list[str] | list[list[str]]
    raw_scores: bool = Field(default=False, description="true: logits; false: sigmoid/softmax")
    truncate: bool = True
    truncation_direction: Literal["right", "left", "Right", "Left"] = "right"


class Prediction(BaseModel):
    score: float
    label: str
