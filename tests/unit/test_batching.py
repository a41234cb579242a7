from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from service.errors import QueueFullError
from service.runtime.batching import DynamicBatcher
from service.runtime.encoder import Tokenized, plan_batches
from service.runtime.types import FloatArray
from tests.fakes import FakeEncoder


@pytest.mark.parametrize("seed", range(5))
def test_plan_batches_covers_everything_within_budgets(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 300, size=200).tolist()
    batches = plan_batches(lengths, max_tokens=1024, max_size=16)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) <= 16
        assert longest * len(b) <= 1024 or len(b) == 1
    # Length-sorted: batches do not overlap in length.
    spans = [(min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches]
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


def test_plan_batches_gives_an_oversized_item_its_own_batch() -> None:
    assert plan_batches([5, 5000, 5], max_tokens=100, max_size=8) == [[0, 2], [1]]


def test_plan_batches_keeps_a_long_text_out_of_a_batch_of_short_ones() -> None:
    # Padding eight 4-token texts to 100 tokens costs more than a run of its own.
    assert plan_batches([4] * 8 + [100], max_tokens=4096, max_size=64) == [
        list(range(8)),
        [8],
    ]
    # Equal short texts join one batch: another run costs more than its padding.
    assert len(plan_batches([10, 11, 12, 13], max_tokens=4096, max_size=64)) == 1


def _batcher(core: FakeEncoder, **kw: int | float) -> DynamicBatcher:
    args: dict[str, int | float] = {
        "max_batch_tokens": 4096,
        "max_batch_size": 64,
        "max_queue": 10_000,
    }
    args.update(kw)
    b = DynamicBatcher(core.infer, **args)  # type: ignore[arg-type]
    b.start()
    return b


def _submit_together_and_check(
    batcher: DynamicBatcher, core: FakeEncoder, texts: list[list[str]]
) -> None:
    """Submit every request at once, stop the batcher, and check each got its own vectors
    in its own order."""

    async def main() -> list[dict[str, FloatArray]]:
        results = await asyncio.gather(*(batcher.submit(core.tokenize(t)) for t in texts))
        return [r.vectors for r in results]

    try:
        results = asyncio.run(main())
    finally:
        batcher.stop()
    for t, got in zip(texts, results, strict=True):
        expected = core.infer(core.tokenize(t))
        for name in core.outputs:
            assert np.allclose(got[name], expected[name])


def test_concurrent_requests_share_batches_and_keep_their_order() -> None:
    core = FakeEncoder(delay=0.02)
    batcher = _batcher(core)
    texts = [[f"request {r} text {i} " + "word " * (i % 7) for i in range(5)] for r in range(20)]
    _submit_together_and_check(batcher, core, texts)
    assert max(core.batches) > 5, "requests arriving together should be batched together"


def test_several_workers_run_side_by_side_and_keep_each_requests_order() -> None:
    core = FakeEncoder()
    running = 0
    overlap = 0
    lock = threading.Lock()

    def infer(batch: Sequence[Tokenized]) -> dict[str, FloatArray]:
        nonlocal running, overlap
        with lock:
            running += 1
            overlap = max(overlap, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return core.infer(batch)

    batcher = DynamicBatcher(
        infer, max_batch_tokens=64, max_batch_size=4, max_queue=10_000, workers=2
    )
    batcher.start()
    texts = [[f"request {r} text {i} " + "word " * (i % 5) for i in range(9)] for r in range(12)]
    _submit_together_and_check(batcher, core, texts)
    assert overlap == 2, "two workers should run batches at the same time"
    assert batcher.depth == 0


def test_full_queue_is_refused_and_depth_recovers() -> None:
    core = FakeEncoder(delay=0.2)
    batcher = _batcher(core, max_queue=8, retry_after=3)
    try:
        first = batcher.submit_nowait(core.tokenize(["a b c"] * 6))
        with pytest.raises(QueueFullError) as info:
            batcher.submit_nowait(core.tokenize(["d e"] * 3))
        assert info.value.retry_after == 3
        assert batcher.depth == 6
        first.result(timeout=5)
        assert batcher.depth == 0
        batcher.submit_nowait(core.tokenize(["d e"] * 3)).result(timeout=5)
    finally:
        batcher.stop()


def test_inference_error_reaches_every_waiting_request() -> None:
    core = FakeEncoder()
    core.fail = RuntimeError("session broke")
    batcher = _batcher(core)
    try:
        futures = [batcher.submit_nowait(core.tokenize(["x y"])) for _ in range(3)]
        for f in futures:
            with pytest.raises(RuntimeError, match="session broke"):
                f.result(timeout=5)
        assert batcher.depth == 0
        core.fail = None
        assert batcher.submit_nowait(core.tokenize(["x y"])).result(timeout=5).vectors
    finally:
        batcher.stop()


def test_token_budget_bounds_each_batch() -> None:
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()
    core = FakeEncoder(max_length=64)

    def infer(batch: Sequence[Tokenized]) -> dict[str, FloatArray]:
        with lock:
            seen.append((len(batch), max(len(t) for t in batch)))
        time.sleep(0.01)
        return core.infer(batch)

    batcher = DynamicBatcher(infer, max_batch_tokens=100, max_batch_size=50, max_queue=1000)
    batcher.start()
    try:
        futures = [batcher.submit_nowait(core.tokenize(["w " * (i % 30)])) for i in range(60)]
        for f in futures:
            f.result(timeout=10)
    finally:
        batcher.stop()
    assert all(n * longest <= 100 or n == 1 for n, longest in seen)


def test_bounded_wait_collects_a_fuller_batch() -> None:
    core = FakeEncoder()
    batcher = _batcher(core, max_wait_s=0.2)
    try:
        first = batcher.submit_nowait(core.tokenize(["one"]))
        time.sleep(0.05)
        second = batcher.submit_nowait(core.tokenize(["two"]))
        first.result(timeout=5)
        second.result(timeout=5)
    finally:
        batcher.stop()
    assert core.batches == [2]
