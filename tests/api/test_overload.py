"""Overload on loopback, bounded in time: no 5xx, every 429 with Retry-After, a one-pair
request answered within `max_queue_seconds` while large requests flood the encoder, and the
work of clients that gave up (timed out, disconnected) dropped instead of done."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np

from service.main import create_app
from service.runtime.encoder import Tokenized
from service.runtime.types import FloatArray
from service.settings import Settings
from tests.api.conftest import DIMS, fake_factory
from tests.fakes import FakeEncoder
from tests.polling import until, wait_until
from tests.serving import live_server, running_server


class RecordingEncoder(FakeEncoder):
    """The fake encoder, slowed per batch, counting how many texts of each word it encoded."""

    def __init__(self, delay: float) -> None:
        super().__init__(dims=DIMS, max_length=32, delay=delay)
        self.encoded: dict[int, int] = {}
        self._seen_lock = threading.Lock()

    def infer(self, batch: Sequence[Tokenized]) -> dict[str, FloatArray]:
        with self._seen_lock:
            for tok in batch:
                if len(tok.ids) > 1:
                    self.encoded[tok.ids[1]] = self.encoded.get(tok.ids[1], 0) + 1
        return super().infer(batch)


def word_id(word: str) -> int:
    """The fake encoder's id of a word (see FakeEncoder.tokenize)."""
    return 1000 + zlib.crc32(word.lower().encode()) % 30000


def distinct_words(prefix: str, count: int) -> list[str]:
    """Words whose fake ids differ from each other's (and from the probe's)."""
    taken = {word_id(w) for w in ("a", "small", "probe", "tiny", "text", "number")}
    words: list[str] = []
    for n in range(100 * count):
        word = f"{prefix}{n}"
        if word_id(word) not in taken:
            taken.add(word_id(word))
            words.append(word)
            if len(words) == count:
                return words
    raise AssertionError("not enough distinct words")


def _sample(url: str, name: str) -> float:
    """One unlabelled sample of the service's /metrics."""
    found = re.search(rf"^{name} (\S+)$", httpx.get(f"{url}/metrics").text, re.M)
    assert found, name
    return float(found.group(1))


def _settings(**update: object) -> Settings:
    base = Settings(
        max_texts_per_request=64,
        max_pairs_per_request=4,
        max_chars_per_text=400,
        max_batch_size=16,
        max_batch_tokens=512,
        max_queue_texts=4096,
        max_queue_seconds=2.0,
        retry_after_seconds=1,
        threads=1,
    )
    return base.model_copy(update=update)


def test_the_work_of_a_client_that_timed_out_is_not_done() -> None:
    core = RecordingEncoder(delay=0.05)
    settings = _settings(max_queue_seconds=30.0)
    app = create_app(settings, engine_factory=fake_factory(core))
    with live_server(app) as url:
        busy_words, gone_words = distinct_words("busy", 64), distinct_words("gone", 64)
        busy = [f"{w} words here" for w in busy_words]
        gone = [f"{w} words here" for w in gone_words]

        async def main() -> int:
            async with httpx.AsyncClient(base_url=url) as client:
                first = asyncio.create_task(client.post("/embed", json={"inputs": busy}))
                await until(
                    lambda: any(core.encoded.get(word_id(w)) for w in busy_words),
                    10,
                    "the busy request's first batch started",
                )
                with contextlib.suppress(httpx.TimeoutException):
                    await client.post("/embed", json={"inputs": gone}, timeout=0.1)
                return (await first).status_code

        assert asyncio.run(main()) == 200
        # Whatever would still encode the abandoned texts has run once the queue is empty.
        wait_until(
            lambda: (
                _sample(url, "simsvc_abandoned_texts_total") == 64
                and _sample(url, "simsvc_queue_depth") == 0
            ),
            10,
            "the abandoned request counted and the queue drained",
        )
        metrics = httpx.get(f"{url}/metrics").text
    assert sum(core.encoded.get(word_id(w), 0) for w in busy_words) == 64
    encoded = sum(core.encoded.get(word_id(w), 0) for w in gone_words)
    assert encoded == 0, f"{encoded} texts of the abandoned request were encoded"
    assert "simsvc_abandoned_texts_total 64.0" in metrics


@dataclass
class Tally:
    statuses: dict[int, int] = field(default_factory=dict)
    missing_retry_after: int = 0
    timeouts: int = 0
    answered_texts: int = 0
    abandoned: list[str] = field(default_factory=list)
    probes: list[float] = field(default_factory=list)


def test_bounded_overload_degrades_gracefully() -> None:
    """For 4 s, 12 clients send 32-text requests back to back, half of them patient (10 s
    timeout), half giving up after 0.3 s; a one-pair probe every 100 ms must answer within
    max_queue_seconds, and most of what the impatient ones abandoned must not be encoded."""
    core = RecordingEncoder(delay=0.04)  # ~400 texts/s at full batches of 16
    settings = _settings(max_queue_seconds=1.5)
    app = create_app(settings, engine_factory=fake_factory(core))
    tally = Tally()
    with live_server(app) as url:
        words = iter(distinct_words("w", 5000))

        async def flood(client: httpx.AsyncClient, until: float, patience: float) -> None:
            while time.monotonic() < until:
                word = next(words)  # each request's texts start with a word of their own
                texts = [f"{word} text number {i}" for i in range(32)]
                try:
                    resp = await client.post("/embed", json={"inputs": texts}, timeout=patience)
                except httpx.TimeoutException:
                    tally.timeouts += 1
                    tally.abandoned.append(word)
                    continue
                tally.statuses[resp.status_code] = tally.statuses.get(resp.status_code, 0) + 1
                if resp.status_code == 429:
                    if not resp.headers.get("retry-after", "").isdigit():
                        tally.missing_retry_after += 1
                    await asyncio.sleep(0.05)
                elif resp.status_code == 200:
                    tally.answered_texts += 32

        async def probe(client: httpx.AsyncClient, until: float) -> None:
            pair = {"pairs": [{"a": "a small probe", "b": "a tiny probe"}]}
            while time.monotonic() < until:
                sent = time.monotonic()
                resp = await client.post("/v1/similarity", json=pair, timeout=30)
                assert resp.status_code == 200, resp.text
                tally.probes.append(time.monotonic() - sent)
                await asyncio.sleep(0.1)

        async def main() -> None:
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
            async with httpx.AsyncClient(base_url=url, limits=limits) as client:
                until = time.monotonic() + 4.0
                await asyncio.gather(
                    *(flood(client, until, patience) for patience in [10.0, 0.3] * 6),
                    probe(client, until),
                )

        asyncio.run(main())
        # The last cancellations have landed once the queue is empty.
        wait_until(lambda: _sample(url, "simsvc_queue_depth") == 0, 30, "the queue drained")
        metrics = httpx.get(f"{url}/metrics").text
    assert not any(s >= 500 for s in tally.statuses), tally.statuses
    assert tally.statuses.get(200, 0) > 0 and tally.statuses.get(429, 0) > 0, tally.statuses
    assert tally.missing_retry_after == 0
    assert tally.probes, "no probe answered"
    worst = max(tally.probes)
    assert worst <= settings.max_queue_seconds, f"a one-pair request took {worst:.2f}s"
    # An abandoned request's texts are encoded only if they were in the batch running when
    # its client gave up: at most one batch of them.
    done = [core.encoded.get(word_id(word), 0) for word in tally.abandoned]
    print("abandoned encoded", sorted(done))
    assert sum(done) <= 0.25 * 32 * len(done), f"{sum(done)} abandoned texts were encoded"
    assert "simsvc_abandoned_texts_total" in metrics
    print(
        f"statuses {tally.statuses}, client timeouts {tally.timeouts}, "
        f"probe p50 {np.median(tally.probes) * 1000:.0f} ms, max {worst * 1000:.0f} ms"
    )


def test_shutdown_ends_within_its_timeout_under_load() -> None:
    """SIGTERM with ~16 s of queued work: the server exits within about twice
    shutdown_timeout_s, and every client gets an answer or a closed connection."""
    core = RecordingEncoder(delay=0.2)
    settings = _settings(max_queue_seconds=60.0, max_batch_size=4, shutdown_timeout_s=1.0)
    app = create_app(settings, engine_factory=fake_factory(core))
    outcomes: list[str] = []

    with running_server(app) as live:

        async def client(http: httpx.AsyncClient, n: int) -> None:
            texts = [f"client{n} text {i}" for i in range(16)]
            try:
                resp = await http.post("/embed", json={"inputs": texts}, timeout=30)
                outcomes.append(str(resp.status_code))
            except httpx.HTTPError as exc:
                outcomes.append(type(exc).__name__)

        async def main() -> None:
            async with httpx.AsyncClient(base_url=live.url) as http:
                tasks = [asyncio.create_task(client(http, n)) for n in range(20)]
                # All 320 texts admitted (queued, or taken into a batch) before the SIGTERM.
                await until(
                    lambda: (
                        _sample(live.url, "simsvc_queue_depth") + sum(core.batches[1:]) >= 20 * 16
                    ),
                    10,
                    "the 20 requests queued",
                )
                took = await asyncio.to_thread(live.shut_down, 30)
                assert took <= 2 * settings.shutdown_timeout_s + 1.5, f"shutdown took {took:.1f}s"
                await asyncio.wait_for(asyncio.gather(*tasks), 10)

        asyncio.run(main())
    print("outcomes", sorted(outcomes))
    assert len(outcomes) == 20, outcomes
    assert not any(o.startswith("5") and o != "503" for o in outcomes), outcomes
    assert sum(core.batches[1:]) < 20 * 16, "the queued work was all done anyway"
