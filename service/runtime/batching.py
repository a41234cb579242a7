"""Dynamic batching: texts from many requests share encoder batches.

A bounded queue (full -> `QueueFullError`, answered 429), worker threads that run the ONNX
session, length-sorted batches planned to waste the least work (`plan_batches`), and an
optional bounded wait for more work. With `max_wait_s = 0` a worker batches whatever queued
while it was busy (continuous batching), so a lone request waits for nothing.

Several workers each take a share of the queue and run their batches side by side (one
session serves concurrent runs); with single-threaded sessions this spreads batches over the
cores instead of splitting each batch across them, which holds up better when the event
loop competes for the same cores.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.errors import QueueFullError
from service.runtime.encoder import Tokenized, plan_batches
from service.runtime.types import FloatArray

InferFn = Callable[[Sequence[Tokenized]], dict[str, FloatArray]]


class BatchObserver(Protocol):
    """Receives batcher figures (the metrics module implements it)."""

    def queue_depth(self, depth: int) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def batch(self, size: int, padded_tokens: int, seconds: float) -> None: ...


class _NullObserver:
    def queue_depth(self, depth: int) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass

    def batch(self, size: int, padded_tokens: int, seconds: float) -> None:
        pass


@dataclass(frozen=True)
class BatchResult:
    """Pooled vectors of a request's texts in order, and where its time went."""

    vectors: dict[str, FloatArray]
    queue_seconds: float
    inference_seconds: float


@dataclass
class _Job:
    future: concurrent.futures.Future[BatchResult]
    size: int
    enqueued: float
    remaining: int
    results: dict[str, FloatArray] = field(default_factory=dict)
    started: float | None = None
    inference_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class _Entry:
    job: _Job
    row: int
    item: Tokenized


class DynamicBatcher:
    """Combines texts of concurrent requests into token-budget batches on one worker thread."""

    def __init__(
        self,
        infer: InferFn,
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        max_queue: int,
        max_wait_s: float = 0.0,
        retry_after: int = 1,
        observer: BatchObserver | None = None,
        workers: int = 1,
    ) -> None:
        self._infer = infer
        self._max_tokens = max_batch_tokens
        self._max_size = max_batch_size
        self._max_queue = max_queue
        self._max_wait = max_wait_s
        self._retry_after = retry_after
        self._observer: BatchObserver = observer or _NullObserver()
        self._queue: deque[_Entry] = deque()
        self._queued_tokens = 0
        self._depth = 0  # texts accepted and not yet answered
        self._cond = threading.Condition()
        self._stopping = False
        self._workers = max(1, workers)
        self._threads: list[threading.Thread] = []
        self._results_lock = threading.Lock()

    @property
    def depth(self) -> int:
        """Texts waiting or being encoded."""
        return self._depth

    def start(self) -> None:
        """Start the worker threads (idempotent)."""
        if not self._threads:
            self._threads = [
                threading.Thread(target=self._run, name=f"simsvc-batcher-{i}", daemon=True)
                for i in range(self._workers)
            ]
            for thread in self._threads:
                thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish queued work, then stop the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def submit_nowait(self, items: Sequence[Tokenized]) -> concurrent.futures.Future[BatchResult]:
        """Queue items; the future yields their pooled vectors in order."""
        future: concurrent.futures.Future[BatchResult] = concurrent.futures.Future()
        if not items:
            future.set_result(BatchResult({}, 0.0, 0.0))
            return future
        now = time.perf_counter()
        job = _Job(future=future, size=len(items), enqueued=now, remaining=len(items))
        with self._cond:
            if self._stopping:
                raise QueueFullError("the encoder is shutting down", self._retry_after)
            if self._depth + len(items) > self._max_queue:
                raise QueueFullError(
                    f"encoder queue is full ({self._depth} texts waiting, limit "
                    f"{self._max_queue}); retry later",
                    self._retry_after,
                )
            for row, item in enumerate(items):
                self._queue.append(_Entry(job, row, item))
                self._queued_tokens += len(item)
            self._depth += len(items)
            depth = self._depth
            self._cond.notify()
        self._observer.queue_depth(depth)
        return future

    async def submit(self, items: Sequence[Tokenized]) -> BatchResult:
        """Queue items and await their vectors without blocking the event loop."""
        return await asyncio.wrap_future(self.submit_nowait(items))

    def _take_window(self) -> list[_Entry]:
        """Wait for work, then take a FIFO window: this worker's share of the queue, at most
        about four batches' worth of tokens."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return []
            if self._max_wait > 0:
                deadline = self._queue[0].job.enqueued + self._max_wait
                while self._queued_tokens < self._max_tokens and not self._stopping:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            window: list[_Entry] = []
            tokens = 0
            budget = 4 * self._max_tokens
            share = -(-len(self._queue) // self._workers)  # ceil: leave the rest to the others
            while (
                self._queue
                and len(window) < share
                and (not window or tokens + len(self._queue[0].item) <= budget)
            ):
                entry = self._queue.popleft()
                tokens += len(entry.item)
                window.append(entry)
            self._queued_tokens -= tokens
            return window

    def _finish(self, entries: Sequence[_Entry]) -> None:
        with self._cond:
            self._depth -= len(entries)
            depth = self._depth
        self._observer.queue_depth(depth)

    def _run(self) -> None:
        while True:
            window = self._take_window()
            if not window:
                return
            live = [e for e in window if not e.job.future.cancelled()]
            self._finish([e for e in window if e.job.future.cancelled()])
            for batch_rows in plan_batches(
                [len(e.item) for e in live], self._max_tokens, self._max_size
            ):
                self._run_batch([live[i] for i in batch_rows])

    def _run_batch(self, batch: list[_Entry]) -> None:
        started = time.perf_counter()
        jobs = list({id(e.job): e.job for e in batch}.values())
        with self._results_lock:  # a job's texts may be spread over several workers
            for job in jobs:
                if job.started is None:
                    job.started = started
        try:
            out = self._infer([e.item for e in batch])
        except Exception as exc:  # noqa: BLE001 - delivered to every waiting request
            self._finish(batch)
            with self._results_lock:
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
            return
        seconds = time.perf_counter() - started
        longest = max(len(e.item) for e in batch)
        self._observer.batch(len(batch), longest * len(batch), seconds)
        done: list[_Job] = []
        with self._results_lock:
            for i, entry in enumerate(batch):
                job = entry.job
                if job.future.done():  # cancelled or failed meanwhile
                    continue
                if not job.results:
                    job.results = {
                        name: np.empty((job.size, arr.shape[1]), dtype=np.float32)
                        for name, arr in out.items()
                    }
                for name, arr in out.items():
                    job.results[name][entry.row] = arr[i]
                job.remaining -= 1
                if job.remaining == 0:
                    done.append(job)
            for job in jobs:
                job.inference_seconds += seconds
        self._finish(batch)
        for job in done:
            queue_seconds = (job.started or started) - job.enqueued
            self._observer.queue_wait(queue_seconds)
            # A client that went away leaves a cancelled future behind.
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                job.future.set_result(
                    BatchResult(job.results, queue_seconds, job.inference_seconds)
                )
