"""Request and response bodies. Size limits are settings, enforced by the engine."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Pair(_Strict):
    a: str
    b: str


class SimilarityRequest(_Strict):
    pairs: list[Pair]
    truncate: bool = True


class PairResult(BaseModel):
    score: float = Field(description="cosine of the whitened vectors")
    probability: float | None = Field(description="pair head's probability; null without a head")
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
