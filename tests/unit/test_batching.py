from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from service.errors import NotReadyError, QueueFullError
from service.runtime.batching import DynamicBatcher
from service.runtime.encoder import Tokenized, plan_batches
from service.runtime.types import FloatArray
from tests.fakes import FakeEncoder
from tests.polling import wait_until


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
        time.sleep(0.05)  # the second arrives 50 ms later, inside the 200 ms window
        second = batcher.submit_nowait(core.tokenize(["two"]))
        first.result(timeout=5)
        second.result(timeout=5)
    finally:
        batcher.stop()
    assert core.batches == [2]


def _timed_infer(
    core: FakeEncoder, per_token: float, seen: list[int] | None = None
) -> Callable[[Sequence[Tokenized]], dict[str, FloatArray]]:
    """An encoder whose batches take time in proportion to their tokens; records the first
    token id of every item it encodes."""

    def infer(batch: Sequence[Tokenized]) -> dict[str, FloatArray]:
        if seen is not None:
            seen.extend(t.ids[0] for t in batch)
        time.sleep(per_token * sum(len(t) for t in batch))
        return core.infer(batch)

    return infer


def _items(marker: int, count: int, tokens: int) -> list[Tokenized]:
    return [Tokenized([marker] + [7] * (tokens - 1)) for _ in range(count)]


def test_a_cancelled_request_leaves_the_queue_at_once_and_is_never_encoded() -> None:
    core = FakeEncoder()
    seen: list[int] = []
    gate = threading.Event()
    entered = threading.Event()
    timed = _timed_infer(core, 0.0, seen)

    def infer(batch: Sequence[Tokenized]) -> dict[str, FloatArray]:
        entered.set()
        gate.wait(10)
        return timed(batch)

    batcher = DynamicBatcher(infer, max_batch_tokens=40, max_batch_size=2, max_queue=24)
    batcher.start()
    try:
        first = batcher.submit_nowait(_items(1, 8, 10))  # 4 batches of 2; the first blocks
        # The worker takes the first request's window and blocks in it.
        assert entered.wait(5), "the worker did not take the first batch"
        gone = batcher.submit_nowait(_items(2, 16, 10))
        assert batcher.depth == 24
        with pytest.raises(QueueFullError):
            batcher.submit_nowait(_items(3, 1, 10))
        gone.cancel()
        assert batcher.depth == 8, "a cancelled request's queued items leave the queue at once"
        admitted = batcher.submit_nowait(_items(3, 16, 10))  # room again
        first.cancel()  # its window is taken: its batches not yet started are skipped
        gate.set()
        admitted.result(timeout=5)
        deadline = time.monotonic() + 5
        while batcher.depth and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.depth == 0
    finally:
        gate.set()
        batcher.stop()
    assert 2 not in seen, "the cancelled request's items were encoded"
    assert seen.count(1) <= 2, f"batches of a cancelled request ran: {seen.count(1)} items"
    assert seen.count(3) == 16


def test_admission_is_bounded_by_the_estimated_time_of_queued_work() -> None:
    core = FakeEncoder()
    gate = threading.Event()
    gate.set()
    entered = threading.Event()
    timed = _timed_infer(core, 0.0005)  # 0.5 ms per token: 2,000 tokens per second

    def infer(batch: Sequence[Tokenized]) -> dict[str, FloatArray]:
        entered.set()
        gate.wait(10)
        return timed(batch)

    batcher = DynamicBatcher(
        infer, max_batch_tokens=200, max_batch_size=64, max_queue=100_000, max_queue_seconds=1.0
    )
    batcher.start()
    try:
        for _ in range(3):  # measure the throughput
            batcher.submit_nowait(_items(1, 10, 20)).result(timeout=5)
        rate = batcher.tokens_per_second
        assert 1000 < rate < 3000, rate
        gate.clear()  # the encoder stalls in the next batch: the queue only fills
        entered.clear()
        admitted = [batcher.submit_nowait(_items(1, 10, 20))]
        assert entered.wait(5), "the worker did not take the batch"  # and blocks in it
        refused = None
        while refused is None and len(admitted) < 100:
            expected = batcher.finish_estimate(200)
            try:
                admitted.append(batcher.submit_nowait(_items(1, 10, 20)))
            except QueueFullError as exc:
                refused = exc
        assert refused is not None and 1 < len(admitted) < 100
        # Admitted while its work fits; refused with the seconds until it would.
        assert batcher.queued_seconds() <= 1.0 < expected
        assert refused.retry_after == max(1, math.ceil(expected - 1.0))
        assert "limit of 1s" in refused.message
        # A small request is admitted though the large ones fill the queue: it shares the
        # encoder with their class instead of waiting behind it.
        small = batcher.submit_nowait(_items(3, 1, 20))
        assert batcher.finish_estimate(20) < 0.1
        gate.set()
        small.result(timeout=5)
        time.sleep(refused.retry_after)  # a client honouring Retry-After: the behaviour tested
        batcher.submit_nowait(_items(2, 10, 20)).result(timeout=10)  # admitted after the wait
        for f in admitted:
            f.result(timeout=10)
    finally:
        gate.set()
        batcher.stop()


def test_a_small_request_is_not_starved_by_large_ones() -> None:
    core = FakeEncoder()
    seen: list[int] = []
    batcher = DynamicBatcher(
        _timed_infer(core, 0.0002, seen), max_batch_tokens=256, max_batch_size=32, max_queue=10_000
    )
    batcher.start()
    finished: dict[str, float] = {}

    def note(name: str) -> Callable[[object], None]:
        def record(_: object) -> None:
            finished.setdefault(name, time.monotonic())

        return record

    try:
        large = [batcher.submit_nowait(_items(1, 128, 16)) for _ in range(6)]  # ~2.5 s of work
        for i, f in enumerate(large):
            f.add_done_callback(note(f"large{i}"))
        wait_until(lambda: seen, 5, "the large requests' first batch started")
        sent = time.monotonic()
        small = batcher.submit_nowait(_items(2, 2, 16))
        small.add_done_callback(note("small"))
        small.result(timeout=10)
        waited = time.monotonic() - sent
        for f in large:
            f.result(timeout=20)
    finally:
        batcher.stop()
    assert waited < 0.5, f"the small request waited {waited:.2f}s behind the large ones"
    assert finished["small"] < min(v for k, v in finished.items() if k.startswith("large"))


def test_stop_ends_within_its_timeout_and_fails_what_is_left() -> None:
    core = FakeEncoder()
    seen: list[int] = []
    batcher = DynamicBatcher(
        _timed_infer(core, 0.001, seen), max_batch_tokens=100, max_batch_size=8, max_queue=10_000
    )
    batcher.start()
    futures = [batcher.submit_nowait(_items(1, 20, 10)) for _ in range(50)]  # ~10 s of work
    wait_until(lambda: seen, 5, "the first batch started")
    started = time.monotonic()
    batcher.stop(timeout=0.5)
    took = time.monotonic() - started
    assert took < 0.5 + 0.5, f"stop took {took:.2f}s"
    outcomes = []
    for f in futures:
        try:
            f.result(timeout=1)
            outcomes.append("done")
        except NotReadyError:
            outcomes.append("refused")
    assert "refused" in outcomes and outcomes[-1] == "refused"
    with pytest.raises(NotReadyError):
        batcher.submit_nowait(_items(1, 1, 10))
