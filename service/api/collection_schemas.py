"""Request and response bodies of the collection routes: documents, index options, search.

The same rules as `service.api.schemas` (strict types, limits marked with `limit(...)` that
`service.api.openapi` fills in from the settings); split from it along the collections' seam.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, StrictBool, StrictFloat

from service.api.schemas import Integer, StrictModel, Text, json_number, limit
from service.runtime.index import PARAM_RANGES
from service.runtime.lexical import AnalyzerName

Scalar = str | int | float | bool | None
FilterKey = Annotated[str, Field(json_schema_extra=limit(maxLength="max_filter_key_chars"))]
FilterValue = Annotated[Scalar, Field(json_schema_extra=limit(maxLength="max_filter_value_chars"))]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
"""A collection's name (the stores' `NAME_PATTERN`; a test keeps them equal)."""


class DocumentIn(StrictModel):
    """One document to index; `id` is the upsert key."""

    id: str = Field(min_length=1, json_schema_extra=limit(maxLength="max_document_id_chars"))
    text: Text
    metadata: dict[str, Any] = Field(default_factory=dict)
    embedding: list[StrictFloat] | str | None = Field(
        default=None,
        description="an imported vector: the raw vector the collection's model yields for "
        "this text, before whitening (its dims: /info's model dims), as numbers or as base64 "
        "of little-endian float32 (OpenAI's encoding_format: base64). It is whitened like an "
        "encoded one and the text is not encoded (it is still stored and searched lexically). "
        "Wrong dims, NaN or infinity: 422",
    )


class DocumentsRequest(StrictModel):
    """A JSON body of documents (or send the same objects as NDJSON lines)."""

    documents: list[DocumentIn] = Field(
        min_length=1, json_schema_extra=limit(maxItems="max_documents_per_request")
    )


class IndexedResponse(BaseModel):
    indexed: int = Field(description="documents written by this request")
    count: int = Field(description="documents in the collection afterwards")


def _param(name: str, what: str) -> Any:
    """The lower bound is fixed; the upper one is the setting (`{kind}_max_{name}`, itself
    within `PARAM_RANGES`), which the schema states and `check_index_params` enforces, so the
    document and the error name one limit."""
    low, _ = PARAM_RANGES[name]
    return Field(
        default=None,
        ge=low,
        description=f"{what}; default: the current value, else the service's",
        json_schema_extra=limit(maximum=f"max_{name}"),
    )


class HnswParams(StrictModel):
    m: Integer | None = _param("m", "links per node")
    ef_construction: Integer | None = _param("ef_construction", "candidates while building")
    ef_search: Integer | None = _param("ef_search", "candidates while searching (at least k)")


class IvfParams(StrictModel):
    nlist: Integer | None = _param("nlist", "inverted lists; 0: about sqrt(documents)")
    nprobe: Integer | None = _param("nprobe", "lists searched per query")


class IvfPqParams(IvfParams):
    pq_m: Integer | None = _param("pq_m", "bytes per vector (sub-quantisers; a divisor of dims)")
    refine: Integer | None = _param(
        "refine", "candidates per result re-scored on the exact vectors on disk; 1: none"
    )


class FlatParams(StrictModel):
    """Exact search takes no parameters."""


class FlatIndex(StrictModel):
    kind: Literal["flat"]
    params: FlatParams = Field(default_factory=FlatParams)


class HnswIndex(StrictModel):
    kind: Literal["hnsw"]
    params: HnswParams = Field(default_factory=HnswParams)


class IvfIndex(StrictModel):
    kind: Literal["ivf"]
    params: IvfParams = Field(default_factory=IvfParams)


class HnswSq8Index(StrictModel):
    """hnsw over 8-bit scalar-quantised vectors (local store): a quarter of the memory."""

    kind: Literal["hnsw_sq8"]
    params: HnswParams = Field(default_factory=HnswParams)


class IvfSq8Index(StrictModel):
    """Inverted lists of 8-bit scalar-quantised vectors (local store)."""

    kind: Literal["ivf_sq8"]
    params: IvfParams = Field(default_factory=IvfParams)


class IvfPqIndex(StrictModel):
    """Inverted lists of product-quantised codes with an exact refine (local store)."""

    kind: Literal["ivf_pq"]
    params: IvfPqParams = Field(default_factory=IvfPqParams)


IndexOptions = Annotated[
    FlatIndex | HnswIndex | IvfIndex | HnswSq8Index | IvfSq8Index | IvfPqIndex,
    Field(discriminator="kind"),
]


class LexicalOptions(StrictModel):
    analyzer: AnalyzerName | None = Field(
        default=None,
        description="english: Snowball stemming and stop words; simple: lower-cased words; "
        "cjk_char / cjk_bigram / cjk_uni_bigram / jieba: Chinese (characters / bigrams / "
        "both / words). A change re-analyses the stored texts.",
    )


class FusionOptions(StrictModel):
    """How hybrid search combines its two lists (unset fields: the collection's defaults)."""

    method: Literal["rrf", "weighted"] | None = Field(
        default=None,
        description="weighted: alpha * dense + (1 - alpha) * lexical over normalised scores "
        "(see normalization); rrf: reciprocal-rank fusion",
    )
    normalization: Literal["minmax", "cosine"] | None = Field(
        default=None,
        description="weighted: minmax scales each list over its candidates; cosine keeps the "
        "dense cosines and divides BM25 by the query's best score",
    )
    rrf_k: Integer | None = Field(default=None, ge=1, le=10_000, description="RRF's constant")
    alpha: Annotated[float, Field(ge=0.0, le=1.0), BeforeValidator(json_number)] | None = Field(
        default=None, description="weight of the dense list"
    )
    candidates: Integer | None = Field(
        default=None,
        ge=1,
        description="how deep each list is read before fusing",
        json_schema_extra=limit(maximum="max_fusion_candidates"),
    )

    def given(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class SearchDefaultsIn(StrictModel):
    mode: Literal["dense", "lexical", "hybrid"] | None = None
    fusion: FusionOptions = Field(default_factory=FusionOptions)


class CollectionOptions(StrictModel):
    index: IndexOptions | None = Field(
        default=None,
        description="the index kind and its parameters; default: the current index, or the "
        "service's default kind for a new collection",
    )
    dims: Integer | None = Field(
        default=None,
        ge=1,
        description="keep the first dims whitened components",
        json_schema_extra=limit(maximum="dims"),
    )
    lexical: LexicalOptions = Field(default_factory=LexicalOptions)
    search: SearchDefaultsIn | None = Field(
        default=None, description="the collection's search defaults (mode, fusion)"
    )


class RefitRequest(StrictModel):
    source: Literal["collection", "bundle", "identity"] = Field(
        default="collection",
        description="fit on the collection's documents, go back to the bundle's, or none",
    )


class RerankOptions(StrictModel):
    candidates: Integer = Field(
        ge=1,
        description="how many of the top results the cross-encoder rescores",
        json_schema_extra=limit(maximum="max_rerank_candidates"),
    )


class SearchRequest(StrictModel):
    query: Text
    k: Integer = Field(default=10, ge=1, json_schema_extra=limit(maximum="max_search_k"))
    filter: dict[FilterKey, FilterValue] = Field(
        default_factory=dict,
        description="metadata equality on every key",
        json_schema_extra=limit(maxProperties="max_filter_keys"),
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
    explain: StrictBool = Field(
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
