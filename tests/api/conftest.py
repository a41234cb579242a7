"""API tests run on the deterministic fake encoder, with a fitted whitening and a head."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.metrics import Metrics
from service.options import engine_options
from service.runtime.assembly import assemble_cross
from service.runtime.engine import Engine
from service.runtime.head import Calibration, PairHead, feature_dims
from service.runtime.prompts import Prompts
from service.runtime.whitening import Whitening, WhiteningAccumulator
from service.settings import Settings
from tests.builders import sentences
from tests.fakes import FakeCrossEncoder, FakeEncoder

DIMS = 16


def fake_parts(core: FakeEncoder) -> tuple[Whitening, PairHead]:
    acc = WhiteningAccumulator(core.dims)
    acc.update(core.infer(core.tokenize(sentences(200)))["mean"])
    weights = np.zeros(feature_dims(core.dims, core.dims), dtype=np.float32)
    weights[-1] = 8.0  # the head leans on the whitened cosine
    head = PairHead("lr", core.dims, core.dims, weights, -4.0, Calibration("logistic"))
    return acc.fit(), head


CROSS_CALIBRATION = Calibration("sigmoid", a=0.5, b=-0.25)
"""The fake cross-encoder's calibration: visibly different from its own sigmoid."""


def fake_factory(
    core: FakeEncoder | None = None,
    cross: FakeCrossEncoder | None = None,
    prompts: Prompts | None = None,
) -> Callable[[Settings, Metrics], Engine]:
    """An engine on the fake encoder; with `cross`, the fake cross-encoder beside it; with
    `prompts`, a bundle's prompts (the encoder's `texts` then shows what reached it)."""

    def factory(settings: Settings, metrics: Metrics) -> Engine:
        enc = core or FakeEncoder(dims=DIMS)
        whitening, head = fake_parts(enc)
        enc.texts.clear()  # the whitening's sentences are not requests
        options = engine_options(settings)
        scorer = None
        if cross is not None:
            scorer = assemble_cross(
                cross,
                options,
                model_name="fake-cross",
                calibration=CROSS_CALIBRATION,
                labels=["dissimilar", "similar"][2 - cross.num_labels :],
                observer=metrics.cross,
            )
        return Engine.assemble(
            enc,  # type: ignore[arg-type]
            options,
            model_name="fake-encoder",
            pooling="mean",
            whitening=whitening,
            head=head,
            cross=scorer,
            observer=metrics,
            prompts=prompts,
        )

    return factory


@pytest.fixture
def settings() -> Settings:
    return Settings(
        max_texts_per_request=8,
        max_pairs_per_request=4,
        max_chars_per_text=200,
        max_body_bytes=4096,
        max_queue_texts=64,
        threads=1,
    )


@pytest.fixture
def client(make_client: Callable[..., TestClient], settings: Settings) -> TestClient:
    return make_client(settings, engine_factory=fake_factory())
