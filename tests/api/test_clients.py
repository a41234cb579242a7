"""Real client libraries, unmodified, against the service on a loopback server: OpenAI's SDK
(embeddings as floats, base64 and token ids, the model list, error messages) and
huggingface_hub's InferenceClient pointed at the service's URL (TEI's `POST /`)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from service.main import create_app
from service.settings import Settings
from tests.api.conftest import DIMS, fake_factory
from tests.fakes import FakeEncoder
from tests.serving import live_server


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    settings = Settings(max_texts_per_request=8, max_chars_per_text=200, threads=1)
    with live_server(create_app(settings, engine_factory=fake_factory())) as base:
        yield base


def _expected(url: str, texts: list[str]) -> np.ndarray:
    """The vectors /embed gives (what every client must get)."""
    import httpx

    return np.array(httpx.post(f"{url}/embed", json={"inputs": texts}).json(), dtype=np.float32)


def test_openai_sdk_embeddings_floats_base64_and_token_ids(url: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    texts = ["the dog runs in the park", "a red car"]
    want = _expected(url, texts)
    # The SDK asks for base64 by default and decodes it.
    got = client.embeddings.create(model="fake-encoder", input=texts)
    vectors = np.array([d.embedding for d in got.data], dtype=np.float32)
    assert vectors.shape == (2, DIMS) and np.allclose(vectors, want, atol=1e-6)
    floats = client.embeddings.create(model="x", input=texts, encoding_format="float")
    assert np.allclose([d.embedding for d in floats.data], want, atol=1e-6)
    assert got.usage.prompt_tokens == floats.usage.total_tokens > 0
    cut = client.embeddings.create(model="x", input="a red car", dimensions=4)
    assert len(cut.data[0].embedding) == 4
    # Token ids of the model's own vocabulary, when the request says they are.
    core = FakeEncoder(dims=DIMS)
    ids = [list(t.ids[1:-1]) for t in core.tokenize(texts)]
    by_ids = client.embeddings.create(model="x", input=ids, extra_body={"token_ids": "model"})
    assert np.allclose([d.embedding for d in by_ids.data], want, atol=1e-6)
    assert [m.id for m in client.models.list()] == ["fake-encoder"]
    assert client.models.retrieve("fake-encoder").id == "fake-encoder"


def test_openai_sdk_shows_the_error_message(url: str) -> None:
    import openai
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as bad:
        client.embeddings.create(model="x", input="a red car", dimensions=999)
    assert "dimensions must be in 1..16" in str(bad.value), str(bad.value)
    assert bad.value.type == "validation" and bad.value.param == "dimensions"
    with pytest.raises(openai.APIStatusError) as big:
        client.embeddings.create(model="x", input=["t"] * 9)
    assert big.value.status_code == 413 and "the limit is 8" in str(big.value)
    with pytest.raises(openai.UnprocessableEntityError) as vocab:
        client.embeddings.create(model="x", input=[[1, 99_999]], extra_body={"token_ids": "model"})
    assert "outside this model's vocabulary" in str(vocab.value)
    # Token ids without that: OpenAI's clients send tiktoken's, which mean other tokens here.
    with pytest.raises(openai.UnprocessableEntityError) as tiktoken_ids:
        client.embeddings.create(model="x", input=[[15339, 1917]])
    assert "check_embedding_ctx_length=False" in str(tiktoken_ids.value)
    assert tiktoken_ids.value.param == "input"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4")
    assert "no model 'gpt-4'" in str(missing.value)


def test_langchain_openai_embeddings_as_the_readme_configures_it(url: str) -> None:
    """The README's recipe, with the real langchain-openai package: the texts are sent as
    strings and embedded as /embed embeds them."""
    from langchain_openai import OpenAIEmbeddings

    texts = ["the dog runs in the park", "a red car"]
    want = _expected(url, texts)
    # The README's spelling (pydantic aliases, which mypy does not see as parameters).
    embeddings = OpenAIEmbeddings(  # type: ignore[call-arg]
        model="simsvc",
        base_url=f"{url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    assert np.allclose(embeddings.embed_documents(texts), want, atol=1e-6)
    assert np.allclose(embeddings.embed_query(texts[1]), want[1], atol=1e-6)


def test_langchain_token_ids_are_refused_with_the_fix_in_the_message(url: str) -> None:
    """What OpenAIEmbeddings sends by default (tiktoken ids, as lists of ints) is refused
    rather than read as this model's vocabulary; the message names the client settings."""
    import httpx

    for body in ({"input": [[15339, 1917]], "model": "x"}, {"input": [15339, 1917]}):
        resp = httpx.post(f"{url}/v1/embeddings", json=body)
        assert resp.status_code == 422, resp.text
        error = resp.json()["error"]
        assert error["type"] == "validation" and error["param"] == "input"
        assert "check_embedding_ctx_length=False" in error["message"]
        assert "tiktoken_enabled=False" in error["message"]


def test_huggingface_inference_client_on_the_service_url(url: str) -> None:
    from huggingface_hub import InferenceClient

    client = InferenceClient(url)
    want = _expected(url, ["the dog runs"])
    got = client.feature_extraction("the dog runs")
    assert got.shape == (1, DIMS) and np.allclose(got, want, atol=1e-6)
    raw = client.feature_extraction("the dog runs", normalize=False)
    assert abs(float(np.linalg.norm(raw[0])) - 1.0) > 1e-3
    scores = client.sentence_similarity(
        "the dog runs in the park", other_sentences=["the dog runs in the park", "a red car"]
    )
    assert len(scores) == 2 and scores[0] > 0.999 > scores[1]
