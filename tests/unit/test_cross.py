"""Cross-encoder pieces without a model: raw scores, padding with segment ids, calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.train_head import fit_calibration
from service.runtime.cross import raw_scores, sigmoid, softmax
from service.runtime.encoder import Tokenized, pad_batch, pad_type_ids
from service.runtime.head import Calibration
from service.runtime.stats import spearman


def test_raw_score_of_one_and_two_label_logits() -> None:
    one = np.array([[2.0], [-1.0]], dtype=np.float32)
    assert raw_scores(one).tolist() == [2.0, -1.0]
    two = np.array([[0.5, 2.0], [1.0, -3.0]], dtype=np.float32)
    assert raw_scores(two).tolist() == pytest.approx([1.5, -4.0])
    # sigmoid of the logit difference is the softmax probability of label 1
    assert sigmoid(raw_scores(two)) == pytest.approx(softmax(two)[:, 1])
    with pytest.raises(ValueError, match=r"\(n, 1\) or \(n, 2\)"):
        raw_scores(np.zeros((2, 3)))


def test_sigmoid_is_stable_at_the_extremes() -> None:
    out = sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    assert out.tolist() == [0.0, 0.5, 1.0]


def test_pad_type_ids_pads_like_pad_batch_and_defaults_to_zeros() -> None:
    batch = [
        Tokenized([101, 7, 102, 8, 9, 102], type_ids=[0, 0, 0, 1, 1, 1]),
        Tokenized([101, 5, 102]),  # a single text: no segment ids
        Tokenized([101, 3, 102, 4, 102], truncated=True, type_ids=[0, 0, 0, 1, 1]),
    ]
    ids, mask = pad_batch(batch, pad_id=0)
    types = pad_type_ids(batch)
    assert types.shape == ids.shape == (3, 6) and types.dtype == np.int64
    assert types.tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 0]]
    assert mask.tolist()[2] == [1, 1, 1, 1, 1, 0]
    assert (types[mask == 0] == 0).all()  # padding never carries segment 1


def test_tokenized_stays_a_plain_text_item_by_default() -> None:
    tok = Tokenized([1, 2, 3])
    assert tok.type_ids is None and not tok.truncated and len(tok) == 3


def _synthetic(n: int, a: float, b: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores and soft targets that follow sigmoid(a * raw + b) plus noise."""
    rng = np.random.default_rng(seed)
    raw = rng.normal(0.0, 2.0, n)
    target = np.clip(sigmoid(a * raw + b) + rng.normal(0.0, 0.02, n), 0.0, 1.0)
    return raw, target


def test_platt_calibration_recovers_a_known_map() -> None:
    raw, target = _synthetic(4000, a=0.7, b=-0.4)
    calibration = fit_calibration("sigmoid", raw, target, binary=False)
    assert calibration.kind == "sigmoid"
    assert calibration.a == pytest.approx(0.7, abs=0.05)
    assert calibration.b == pytest.approx(-0.4, abs=0.05)
    # monotone: ranking (and so Spearman) is the raw score's
    assert spearman(calibration(raw), target) == pytest.approx(spearman(raw, target))


def test_platt_calibration_on_binary_labels_matches_frequencies() -> None:
    rng = np.random.default_rng(1)
    raw = rng.normal(0.0, 2.0, 20_000)
    labels = (rng.random(raw.size) < sigmoid(1.5 * raw - 1.0)).astype(np.float64)
    calibration = fit_calibration("sigmoid", raw, labels, binary=True)
    p = calibration(raw)
    for low, high in ((0.1, 0.3), (0.4, 0.6), (0.7, 0.9)):
        inside = (p >= low) & (p < high)
        assert labels[inside].mean() == pytest.approx(p[inside].mean(), abs=0.03)


def test_isotonic_calibration_is_monotone_within_zero_and_one() -> None:
    raw, target = _synthetic(2000, a=1.2, b=0.3, seed=2)
    calibration = fit_calibration("isotonic", raw, target, binary=False)
    grid = np.linspace(-10, 10, 201)
    p = calibration(grid)
    assert (np.diff(p) >= 0).all() and p.min() >= 0.0 and p.max() <= 1.0
    assert np.abs(calibration(raw) - sigmoid(1.2 * raw + 0.3)).mean() < 0.03


def test_a_calibration_is_plain_numbers_in_json() -> None:
    raw, target = _synthetic(500, a=1.0, b=0.0)
    for kind in ("sigmoid", "isotonic"):
        calibration = fit_calibration(kind, raw, target, binary=False)
        text = json.dumps(calibration.to_dict())
        again = Calibration.from_dict(json.loads(text))
        assert np.array_equal(again(raw), calibration(raw))


def test_the_engine_scores_pairs_with_its_cross_encoder_without_http() -> None:
    import asyncio

    from service.errors import NoCrossEncoderError, TooManyTextsError
    from service.runtime.assembly import EngineOptions, assemble_cross
    from service.runtime.engine import Engine
    from tests.fakes import FakeCrossEncoder, FakeEncoder

    options = EngineOptions(max_pairs=3)
    calibration = Calibration("sigmoid", a=2.0, b=1.0)
    cross = assemble_cross(FakeCrossEncoder(), options, model_name="c", calibration=calibration)
    engine = Engine.assemble(FakeEncoder(), options, model_name="m", pooling="mean", cross=cross)
    bare = Engine.assemble(FakeEncoder(), options, model_name="m", pooling="mean")

    async def run() -> None:
        engine.start()
        try:
            scored = await engine.cross_similarity([("a b", "a b"), ("a b", "c d"), ("x", None)])
            assert scored.raw.tolist() == pytest.approx([3.0, -3.0, -3.0])
            assert scored.probabilities == pytest.approx(sigmoid(2.0 * scored.raw + 1.0))
            assert scored.similar.tolist() == [True, False, False]
            with pytest.raises(TooManyTextsError):
                await engine.cross_similarity([("a", "b")] * 4)
            four = await engine.cross_similarity([("a", "b")] * 4, limit=4)
            assert len(four.raw) == 4
        finally:
            engine.stop()
        with pytest.raises(NoCrossEncoderError):
            await bare.cross_similarity([("a", "b")])

    asyncio.run(run())


def test_the_card_s_max_length_is_read_where_finetune_writes_it() -> None:
    from models.export_cross import card_max_length

    assert card_max_length({"hyperparameters": {"max_length": 128}, "objective": "cross"}) == 128
    assert card_max_length({"max_length": 64}) == 64
    assert card_max_length({"objective": "cross"}) is None and card_max_length(None) is None
