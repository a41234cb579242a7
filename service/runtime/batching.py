"""Dynamic batching: items from many requests share encoder batches, fairly and boundedly.

- **Fair**: start-time fair queueing over request size classes (requests of about the same
  number of tokens, within a factor of two, form one class). Backlogged classes share the
  encoder equally, token for token; within a class requests are served first come, first
  served, each to completion. A one-pair request arriving behind floods of large requests
  is served in the next window, and under overload large requests finish one after another
  (some in time) instead of all progressing slowly (none in time); no class starves.
- **Bounded in time**: a request is admitted only when it would be done within
  `max_queue_seconds`, estimated from the tokens queued ahead of it (its class's, times the
  classes sharing the encoder) and the measured throughput; beyond, it is refused
  (`QueueFullError`, a 429) with a `retry_after` that says when it would fit. A small
  request is not refused because large ones fill the queue. `max_queue` bounds the items
  as well (memory).
- **Cancellable**: when a request's future is cancelled (its client went away) or fails, its
  items still queued are dropped at once and items already taken into a window are skipped
  before their batch runs; only a batch already running is finished.
- **Stoppable within a deadline**: `stop` lets the workers finish queued work for at most
  `shutdown_timeout_s`, then fails what is left (`NotReadyError`, a 503).

Each worker thread takes a window (at most one batch of items and tokens, its share when
several workers run), plans length-sorted batches that waste the least work
(`plan_batches`), and runs them. With `max_wait_s = 0` a worker batches whatever queued
while it was busy (continuous batching), so a lone request waits for nothing.

The batcher is generic: items are `Tokenized` (their length is their cost), `infer` returns
one array per output name with a row per item, in order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.errors import NotReadyError, QueueFullError
from service.runtime.encoder import Tokenized, plan_batches
from service.runtime.types import FloatArray

InferFn = Callable[[Sequence[Tokenized]], dict[str, FloatArray]]


class BatchObserver(Protocol):
    """Receives batcher figures (the metrics module implements it)."""

    def queue_depth(self, depth: int) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def batch(self, size: int, padded_tokens: int, seconds: float) -> None: ...

    def queue_work(self, seconds: float) -> None: ...

    def abandoned(self, items: int) -> None: ...


class _NullObserver:
    def queue_depth(self, depth: int) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass

    def batch(self, size: int, padded_tokens: int, seconds: float) -> None:
        pass

    def queue_work(self, seconds: float) -> None:
        pass

    def abandoned(self, items: int) -> None:
        pass


def _shutting_down() -> NotReadyError:
    return NotReadyError("the service is shutting down; retry on another replica")


@dataclass(frozen=True)
class BatchResult:
    """Pooled vectors of a request's items in order, and where its time went."""

    vectors: dict[str, FloatArray]
    queue_seconds: float
    inference_seconds: float


@dataclass(eq=False)
class _Job:
    future: concurrent.futures.Future[BatchResult]
    size: int
    enqueued: float
    remaining: int
    """Items not yet answered."""
    queued: int
    """Items still in the queue (not taken into a window)."""
    queued_tokens: int
    size_class: int = 0
    start: int = 0
    """Virtual start and finish of the job's tokens in its class's sequence."""
    finish: int = 0
    dropped: bool = False
    """Its future is done (cancelled or failed) and its queued items were dropped."""
    results: dict[str, FloatArray] = field(default_factory=dict)
    started: float | None = None
    inference_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class _Entry:
    job: _Job
    row: int
    item: Tokenized
    start: int
    """Virtual time when this item's turn starts: its job's start plus the tokens before it."""


@dataclass(frozen=True)
class _Rate:
    """Measured throughput in tokens per second (an exponential moving average)."""

    tokens_per_second: float = 0.0

    def update(self, tokens: int, seconds: float, alpha: float = 0.3) -> _Rate:
        if seconds <= 0 or tokens <= 0:
            return self
        measured = tokens / seconds
        old = self.tokens_per_second
        return _Rate(measured if old == 0 else (1 - alpha) * old + alpha * measured)


class DynamicBatcher:
    """Combines items of concurrent requests into fair, token-budget batches on worker
    threads; admission bounded by the estimated time of the queued work."""

    def __init__(
        self,
        infer: InferFn,
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        max_queue: int,
        max_queue_seconds: float = math.inf,
        max_wait_s: float = 0.0,
        retry_after: int = 1,
        observer: BatchObserver | None = None,
        workers: int = 1,
        shutdown_timeout_s: float = 10.0,
    ) -> None:
        self._infer = infer
        self._max_tokens = max_batch_tokens
        self._max_size = max_batch_size
        self._max_queue = max_queue
        self._max_queue_seconds = max_queue_seconds
        self._max_wait = max_wait_s
        self._retry_after = retry_after
        self._shutdown_timeout = shutdown_timeout_s
        self._observer: BatchObserver = observer or _NullObserver()
        self._heap: list[tuple[int, int, _Entry]] = []  # (virtual finish tag, seq, entry)
        self._class_finish: dict[int, int] = {}  # per size class, where its next job starts
        self._class_tokens: dict[int, int] = {}  # per size class with work, tokens queued
        self._seq = itertools.count()
        self._vtime = 0
        self._garbage = 0  # heap entries of dropped jobs, skipped when popped
        self._queued = 0  # items in the heap that will run
        self._queued_tokens = 0
        self._oldest = math.inf  # enqueue time of the oldest live job (bounded wait)
        self._depth = 0  # items accepted and not yet answered
        self._rate = _Rate()
        self._cond = threading.Condition()
        self._stopping = False
        self._aborted = False
        self._workers = max(1, workers)
        self._threads: list[threading.Thread] = []
        self._results_lock = threading.Lock()

    # -- figures -------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Items waiting or being encoded."""
        return self._depth

    @property
    def tokens_per_second(self) -> float:
        """The measured throughput of all workers together (0 until a batch ran)."""
        return self._rate.tokens_per_second * self._workers

    def queued_seconds(self) -> float:
        """The estimated time to finish the queued work (0 until a batch was measured)."""
        rate = self.tokens_per_second
        return self._queued_tokens / rate if rate > 0 else 0.0

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker threads (idempotent)."""
        if not self._threads:
            self._threads = [
                threading.Thread(target=self._run, name=f"simsvc-batcher-{i}", daemon=True)
                for i in range(self._workers)
            ]
            for thread in self._threads:
                thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new work, finish queued work for at most `timeout` seconds (default: the
        shutdown timeout), then fail what is left and stop the workers. A batch already
        running is finished (the session cannot be interrupted)."""
        deadline = time.monotonic() + (self._shutdown_timeout if timeout is None else timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            self._aborted = True
            left = [entry.job for _, _, entry in self._heap if not entry.job.dropped]
            self._cond.notify_all()
        for job in dict.fromkeys(left):  # each job once, in order
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                job.future.set_exception(_shutting_down())
        for thread in self._threads:
            thread.join(max(1.0, deadline - time.monotonic()))
        self._threads = []

    # -- submission ----------------------------------------------------------------------

    def _estimate(self, tokens: int) -> float:
        rate = self.tokens_per_second
        return tokens / rate if rate > 0 else 0.0

    def finish_estimate(self, tokens: int) -> float:
        """Seconds until a request of `tokens` tokens queued now would be done: its size
        class's queued work and its own, times the classes sharing the encoder (never more
        than all the queued work and its own). 0 until a batch was measured."""
        size_class = tokens.bit_length()
        ahead = self._class_tokens.get(size_class, 0) + tokens
        classes = len(self._class_tokens) + (size_class not in self._class_tokens)
        return self._estimate(min(self._queued_tokens + tokens, ahead * classes))

    def _refuse(self, items: Sequence[Tokenized], tokens: int) -> QueueFullError | None:
        """Why these items cannot be queued now, if they cannot (the caller holds the lock)."""
        if self._depth + len(items) > self._max_queue:
            wait = self._estimate(self._queued_tokens)
            return QueueFullError(
                f"encoder queue is full ({self._depth} texts waiting, limit "
                f"{self._max_queue}); retry later",
                max(self._retry_after, math.ceil(wait)),
            )
        wait = self.finish_estimate(tokens)
        if self._queued_tokens and wait > self._max_queue_seconds:
            return QueueFullError(
                f"this request would be done in about {wait:.1f}s (the encoder queue holds "
                f"{self.queued_seconds():.1f}s of work), over the limit of "
                f"{self._max_queue_seconds:g}s; retry later",
                max(self._retry_after, math.ceil(wait - self._max_queue_seconds)),
            )
        return None

    def submit_nowait(self, items: Sequence[Tokenized]) -> concurrent.futures.Future[BatchResult]:
        """Queue items; the future yields their pooled vectors in order. Cancelling the
        future drops the items not yet started."""
        future: concurrent.futures.Future[BatchResult] = concurrent.futures.Future()
        if not items:
            future.set_result(BatchResult({}, 0.0, 0.0))
            return future
        tokens = sum(len(item) for item in items)
        now = time.perf_counter()
        job = _Job(future, len(items), now, len(items), len(items), tokens)
        with self._cond:
            if self._stopping:
                raise _shutting_down()
            refusal = self._refuse(items, tokens)
            if refusal is not None:
                raise refusal
            job.size_class = tokens.bit_length()
            job.start = tag = max(self._vtime, self._class_finish.get(job.size_class, 0))
            for row, item in enumerate(items):
                entry = _Entry(job, row, item, tag)
                tag += len(item)
                heapq.heappush(self._heap, (tag, next(self._seq), entry))
            job.finish = self._class_finish[job.size_class] = tag
            self._class_tokens[job.size_class] = self._class_tokens.get(job.size_class, 0) + tokens
            self._queued += len(items)
            self._queued_tokens += tokens
            self._oldest = min(self._oldest, now)
            self._depth += len(items)
            depth, work = self._depth, self.queued_seconds()
            self._cond.notify()
        future.add_done_callback(lambda _: self._drop(job))
        self._observer.queue_depth(depth)
        self._observer.queue_work(work)
        return future

    async def submit(self, items: Sequence[Tokenized]) -> BatchResult:
        """Queue items and await their vectors without blocking the event loop; a cancelled
        await (the client went away) drops the items not yet started."""
        return await asyncio.wrap_future(self.submit_nowait(items))

    def _drop(self, job: _Job) -> None:
        """A job's future is done: forget its queued items (they are skipped when popped)."""
        with self._cond:
            if job.dropped or job.queued == 0:
                job.dropped = True
                return
            job.dropped = True
            dropped = job.queued
            self._garbage += dropped
            self._queued -= dropped
            self._queued_tokens -= job.queued_tokens
            self._take_class_tokens(job.size_class, job.queued_tokens)
            self._depth -= dropped
            job.queued, job.queued_tokens = 0, 0
            if self._class_finish.get(job.size_class) == job.finish:  # give its turn back
                self._class_finish[job.size_class] = max(self._vtime, job.start)
            if self._garbage > max(64, len(self._heap) // 2):  # compact the heap
                self._heap = [e for e in self._heap if not e[2].job.dropped]
                heapq.heapify(self._heap)
                self._garbage = 0
            depth, work = self._depth, self.queued_seconds()
        if job.future.cancelled():
            self._observer.abandoned(dropped)
        self._observer.queue_depth(depth)
        self._observer.queue_work(work)

    # -- the workers ---------------------------------------------------------------------

    def _take_class_tokens(self, size_class: int, tokens: int) -> None:
        left = self._class_tokens.get(size_class, 0) - tokens
        if left > 0:
            self._class_tokens[size_class] = left
        else:
            self._class_tokens.pop(size_class, None)

    def _pop(self) -> _Entry | None:
        """The live entry with the smallest tag (the caller holds the lock)."""
        while self._heap:
            _, _, entry = heapq.heappop(self._heap)
            if entry.job.dropped:
                self._garbage -= 1
                continue
            self._vtime = max(self._vtime, entry.start)
            entry.job.queued -= 1
            entry.job.queued_tokens -= len(entry.item)
            self._queued -= 1
            self._queued_tokens -= len(entry.item)
            self._take_class_tokens(entry.job.size_class, len(entry.item))
            return entry
        return None

    def _take_window(self) -> list[_Entry]:
        """Wait for work, then take the next window in fair order: at most one batch of
        items and tokens, this worker's share of the queue when several run."""
        with self._cond:
            while not self._queued and not self._stopping:
                self._cond.wait()
            if self._aborted or not self._queued:
                return []
            if self._max_wait > 0:
                deadline = self._oldest + self._max_wait
                while self._queued_tokens < self._max_tokens and not self._stopping:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            share = -(-self._queued // self._workers)  # ceil: leave the rest to the others
            window: list[_Entry] = []
            tokens = 0
            # One batch's worth: the next window, where a newly arrived small request goes,
            # is never more than one batch away.
            while len(window) < min(share, self._max_size):
                head = self._heap[0][2] if self._heap else None
                if head is None:
                    break
                if window and not head.job.dropped and tokens + len(head.item) > self._max_tokens:
                    break
                entry = self._pop()
                if entry is None:
                    break
                window.append(entry)
                tokens += len(entry.item)
            self._oldest = time.perf_counter() if self._queued else math.inf
            work = self.queued_seconds()
        self._observer.queue_work(work)
        return window

    def _finish(self, count: int) -> None:
        with self._cond:
            self._depth -= count
            depth = self._depth
        self._observer.queue_depth(depth)

    def _run(self) -> None:
        while True:
            window = self._take_window()
            if not window:
                return
            for rows in plan_batches(
                [len(e.item) for e in window], self._max_tokens, self._max_size
            ):
                batch = [window[i] for i in rows]
                live = [e for e in batch if not e.job.future.done()]
                if len(live) < len(batch):  # the request went away, or failed, meanwhile
                    self._finish(len(batch) - len(live))
                    self._observer.abandoned(sum(1 for e in batch if e.job.future.cancelled()))
                if live and not self._aborted:
                    self._run_batch(live)
                elif live:  # stopped past its deadline: fail what was taken but not run
                    self._finish(len(live))
                    for job in {id(e.job): e.job for e in live}.values():
                        with contextlib.suppress(concurrent.futures.InvalidStateError):
                            job.future.set_exception(_shutting_down())

    def _run_batch(self, batch: list[_Entry]) -> None:
        started = time.perf_counter()
        jobs = list({id(e.job): e.job for e in batch}.values())
        with self._results_lock:  # a job's items may be spread over several workers
            for job in jobs:
                if job.started is None:
                    job.started = started
        try:
            out = self._infer([e.item for e in batch])
        except Exception as exc:  # noqa: BLE001 - delivered to every waiting request
            self._finish(len(batch))
            with self._results_lock:
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
            return
        seconds = time.perf_counter() - started
        longest = max(len(e.item) for e in batch)
        tokens = sum(len(e.item) for e in batch)
        with self._cond:
            self._rate = self._rate.update(tokens, seconds)
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
        self._finish(len(batch))
        for job in done:
            queue_seconds = (job.started or started) - job.enqueued
            self._observer.queue_wait(queue_seconds)
            # A client that went away leaves a cancelled future behind.
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                job.future.set_result(
                    BatchResult(job.results, queue_seconds, job.inference_seconds)
                )
