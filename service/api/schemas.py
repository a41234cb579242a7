"""Request and response bodies: the API's contract.

Types are strict where the schema says boolean or integer (`0` is not `false`, `"5"` is not
`5`). Limits that are settings (texts per request, characters per text, k, index parameter
bounds, the model's dims) are marked with `limit(...)`; `service.api.openapi` writes the
configured values into the OpenAPI document, and the engine, the collections and
`service.api.validation` enforce them, with the status codes the README lists.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool
from pydantic_core import PydanticCustomError

LIMIT_KEY = "x-simsvc-limit"


def limit(**bounds: str | int) -> dict[str, Any]:
    """A JSON-schema marker: each keyword (maxItems, maximum, ...) takes a setting's value
    (named by a string) or a fixed number; `service.api.openapi` resolves it."""
    return {LIMIT_KEY: bounds}


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _whole_number(value: Any) -> Any:
    """JSON Schema's integer: `5` or `5.0`, never `true` or `"5"`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("int_type", "must be an integer (not a boolean or a string)")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a whole number")
        return int(value)
    return value


Integer = Annotated[int, BeforeValidator(_whole_number)]
"""An integer as JSON Schema means it: pydantic's lax int would take `"5"` and `true`, its
strict int would refuse `5.0`."""


def json_number(value: Any) -> Any:
    """JSON Schema's number: `1` or `0.5`, never `true` or `"0.5"`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("float_type", "must be a number (not a boolean or a string)")
    return float(value)


def _escape(code: int) -> str:
    """`\\uXXXX` (read alike by ECMA-262 and Python regexes) in the BMP; beyond, the character."""
    return f"\\u{code:04x}" if code <= 0xFFFF else chr(code)


BLANK_RANGES = (
    (0x0000, 0x0020), (0x007F, 0x00A0), (0x00AD, 0x00AD), (0x0600, 0x0605), (0x061C, 0x061C),
    (0x06DD, 0x06DD), (0x070F, 0x070F), (0x0890, 0x0891), (0x08E2, 0x08E2), (0x1680, 0x1680),
    (0x180E, 0x180E), (0x2000, 0x200F), (0x2028, 0x202F), (0x205F, 0x2064), (0x2066, 0x206F),
    (0x3000, 0x3000), (0xFEFF, 0xFEFF), (0xFFF9, 0xFFFB), (0x110BD, 0x110BD),
    (0x110CD, 0x110CD), (0x13430, 0x13438), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001), (0xE0020, 0xE007F),
)  # fmt: skip
"""Characters that carry nothing to encode: Unicode whitespace, separators, control and
format characters (the tokenizer drops or splits on them). A test keeps this equal to
`unicodedata`'s categories; a fixed list keeps the schema's pattern and the check identical
whatever Unicode version the client or the server runs."""
VISIBLE = "[^" + "".join(f"{_escape(a)}-{_escape(b)}" for a, b in BLANK_RANGES) + "]"
"""A text's pattern: at least one character that is not blank (the schema says the same)."""
_VISIBLE = re.compile(VISIBLE)


def _not_blank(value: str) -> str:
    """One rule on every route that takes text: an empty or whitespace-only text means
    nothing to encode (OpenAI refuses it too), so it is a 422, not a vector of padding."""
    if not _VISIBLE.search(value):
        raise ValueError(
            "must contain a non-whitespace character (empty or whitespace-only text is refused)"
        )
    return value


Text = Annotated[
    str,
    AfterValidator(_not_blank),
    Field(
        json_schema_extra={
            "minLength": 1,
            "pattern": VISIBLE,
            **limit(maxLength="max_chars_per_text"),
        }
    ),
]
"""A text to encode: not empty, not whitespace only, at most max_chars_per_text characters
(the engine counts them; the schema says so)."""
TextList = Annotated[
    list[Text], Field(json_schema_extra=limit(minItems=1, maxItems="max_texts_per_request"))
]
Texts = Text | TextList
TokenIds = Annotated[
    list[Annotated[Integer, Field(ge=0, json_schema_extra=limit(maximum="vocab_max_id"))]],
    Field(json_schema_extra=limit(minItems=1, maxItems="max_chars_per_text")),
]
TokenIdLists = Annotated[
    list[TokenIds], Field(json_schema_extra=limit(minItems=1, maxItems="max_texts_per_request"))
]
Dimensions = Annotated[
    Integer | None,
    Field(
        default=None,
        ge=1,
        description="keep the leading components (at most the model's dims)",
        json_schema_extra=limit(maximum="dims"),
    ),
]
PromptName = Annotated[
    str | None,
    Field(
        default=None,
        description="one of the model's prompts (GET /info lists them), put before each text; "
        "default: the model's default prompt",
    ),
]
Truncate = Annotated[
    StrictBool,
    Field(
        default=True,
        description="cut texts to the model's max length; false: a longer text is a 413",
    ),
]


class ErrorResponse(BaseModel):
    """Every error outside /v1 (text-embeddings-inference's shape)."""

    error: str
    error_type: str


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="the error type (the README's table)")
    param: str | None = Field(description="the request field at fault, when one is")
    code: str | None


class OpenAIErrorResponse(BaseModel):
    """Every error on the /v1 routes: OpenAI's shape, plus `error_type`."""

    error: OpenAIErrorDetail
    error_type: str


# Similarity.


class Pair(StrictModel):
    a: Text
    b: Text


class SimilarityRequest(StrictModel):
    pairs: list[Pair] = Field(
        min_length=1, json_schema_extra=limit(maxItems="max_pairs_per_request")
    )
    truncate: Truncate = True
    mode: Literal["bi", "cross"] = Field(
        default="bi",
        description="bi: two vectors and the pair head; cross: the bundle's cross-encoder "
        "reads both texts at once, and in both orders with the logits averaged when the "
        "bundle is symmetric (GET /info: cross_encoder.symmetric), so score(a, b) = "
        "score(b, a) (424 no_cross_encoder without one)",
    )


class PairResult(BaseModel):
    score: float = Field(
        description="bi: cosine of the whitened vectors; cross: the cross-encoder's own "
        "probability, sigmoid of its logit (of the mean logit of both orders when symmetric)"
    )
    probability: float | None = Field(
        description="bi: the pair head's probability (null without a head); cross: the "
        "calibrated probability"
    )
    similar: bool | None = Field(description="probability >= threshold; null without a head")


class SimilarityResponse(BaseModel):
    model: str
    results: list[PairResult]


class TEISimilarityInputs(StrictModel):
    source_sentence: Text
    sentences: list[Text] = Field(
        min_length=1, json_schema_extra=limit(maxItems="max_texts_per_request")
    )


class TEISimilarityRequest(BaseModel):
    """text-embeddings-inference's /similarity body."""

    inputs: TEISimilarityInputs
    truncate: Truncate = True


# Embeddings.

Pooling = Literal["cls", "pooler", "mean", "first_last_avg"]


class EmbedRequest(BaseModel):
    """text-embeddings-inference's /embed body, plus `pooling`, `whiten` and `dimensions`.

    `whiten: true` needs the bundle's pooling (the whitening was fitted on it)."""

    inputs: Texts
    normalize: StrictBool = True
    truncate: Truncate = True
    pooling: Pooling | None = None
    whiten: StrictBool | None = Field(
        default=None, description="default: whiten when the pooling is the bundle's"
    )
    dimensions: Dimensions = None
    prompt_name: PromptName = None


class OpenAIEmbeddingRequest(BaseModel):
    """OpenAI's /v1/embeddings body: texts, or token ids (one list or a list of lists).

    Token ids are read only as this model's own vocabulary, and only when the request says so
    (`token_ids: "model"`) or the service is set to (`SIMSVC_ACCEPT_TOKEN_IDS`): the ids
    OpenAI's clients send (LangChain's OpenAIEmbeddings by default) are tiktoken's, which
    name other tokens here, so they are refused with a 422 that says how to send text."""

    input: Text | TextList | TokenIds | TokenIdLists
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Dimensions = None
    user: str | None = None
    truncate: Truncate = True
    token_ids: Literal["model"] | None = Field(
        default=None,
        description='"model": the token ids in `input` are this model\'s own vocabulary ids '
        "(without special tokens); without it they are refused unless the service accepts "
        "them (setting accept_token_ids)",
    )
    prompt_name: PromptName = None


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


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# text-embeddings-inference's `POST /` and `/invocations`: the task follows the payload.


class TEIParameters(BaseModel):
    """The `parameters` object huggingface_hub's InferenceClient sends beside `inputs`."""

    normalize: StrictBool | None = None
    truncate: StrictBool | None = None
    dimensions: Dimensions = None
    truncation_direction: Literal["right", "Right"] | None = Field(
        default=None, description="only right truncation is offered"
    )
    prompt_name: PromptName = None


class TEIFeatureExtraction(EmbedRequest):
    """Feature extraction: `{"inputs": text or texts}` (the /embed body)."""

    parameters: TEIParameters | None = None


class TEISentenceSimilarity(TEISimilarityRequest):
    """Sentence similarity: `{"inputs": {"source_sentence", "sentences"}}`."""

    parameters: dict[str, Any] | None = Field(default=None, description="accepted and unused")


# Cross-encoder routes, in text-embeddings-inference's shapes.


Direction = Literal["right", "left", "Right", "Left"]


class RerankRequest(BaseModel):
    """text-embeddings-inference's /rerank body."""

    query: Text
    texts: list[Text] = Field(min_length=1, json_schema_extra=limit(maxItems="max_rerank_texts"))
    raw_scores: StrictBool = Field(default=False, description="true: the logit; false: its sigmoid")
    return_text: StrictBool = False
    truncate: Truncate = True
    truncation_direction: Direction = "right"


class Rank(BaseModel):
    index: int = Field(ge=0)
    score: float
    text: str | None = Field(default=None, description="present when return_text is true")


class PredictRequest(BaseModel):
    """text-embeddings-inference's /predict body: a text, a pair [a, b], or a batch of both."""

    inputs: (
        Text
        | Annotated[list[Text], Field(min_length=2, max_length=2)]
        | Annotated[
            list[Annotated[list[Text], Field(min_length=1, max_length=2)]],
            Field(min_length=1, json_schema_extra=limit(maxItems="max_pairs_per_request")),
        ]
    )
    raw_scores: StrictBool = Field(
        default=False, description="true: logits; false: sigmoid/softmax"
    )
    truncate: Truncate = True
    truncation_direction: Direction = "right"


class Prediction(BaseModel):
    score: float
    label: str
