"""The async request engine: an adaptive in-flight limit and retries around one backend.

- ``AdaptiveLimiter`` (AIMD, written here in ~40 lines because no maintained asyncio library on
  PyPI adapts a concurrency limit): at most ``limit`` requests in flight; a 429/503 halves the
  limit — once per congestion epoch, so a burst of rejections sent at the old limit counts once —
  and every ``limit`` successes add one back, up to the configured maximum.
- Retries use tenacity (exponential back-off with full jitter, ``stop_after_attempt``): 429, 5xx,
  connection errors/resets, timeouts and an error line mid-stream (``ResponseError`` status -1)
  are retried; 400, 404 and anything else are not. A request holds no in-flight slot while it
  backs off, so the other prompts keep every slot busy.
- Backends (``tasks.batch.backends``): Ollama's native API over aiohttp, or the official
  ``openai.AsyncOpenAI``; both take ``GoogleIdTokenAuth`` so ID tokens refresh however long the run.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import ollama
import openai
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from tasks.batch.backends import Backend
from tasks.batch.records import Completion, PromptRequest, error_record, redact, result_record
from tasks.errors import IncompleteResponseError

RETRYABLE_STATUS = frozenset({-1, 408, 429, 500, 502, 503, 504})
OVERLOAD_STATUS = frozenset({429, 503})


def status_of(exc: BaseException) -> int | None:
    if isinstance(exc, ollama.ResponseError):
        return int(exc.status_code)
    if isinstance(exc, openai.APIStatusError):
        return int(exc.status_code)
    return None


def is_transient(exc: BaseException) -> bool:
    status = status_of(exc)
    if status is not None:
        return status in RETRYABLE_STATUS
    return isinstance(
        exc,
        ConnectionError  # nothing answered (the official client raises the builtin too)
        | aiohttp.ClientConnectionError  # resets, server disconnects, socket timeouts
        | aiohttp.ClientPayloadError  # a body cut short
        | httpx.TransportError  # (OpenAI mode) timeouts, resets, RemoteProtocolError
        | openai.APIConnectionError  # includes APITimeoutError
        | IncompleteResponseError
        | TimeoutError,
    )


def describe(exc: BaseException) -> str:
    if isinstance(exc, ollama.ResponseError):
        return redact(
            f"HTTP {exc.status_code}: {exc.error}"
            if exc.status_code != -1
            else f"error line mid-stream: {exc.error}"
        )
    text = str(exc) or type(exc).__name__
    return redact(f"{type(exc).__name__}: {text}")


class AdaptiveLimiter:
    def __init__(self, max_limit: int, *, concurrency: int, max_instances: int) -> None:
        if max_limit < 1:
            raise ValueError("the in-flight limit must be >= 1")
        self.max_limit = max_limit
        self.limit = max_limit
        self.in_flight = 0
        self.decreases = 0
        self._epoch = 0
        self._credit = 0
        # FIFO of waiters; a release hands its slot to exactly one of them (no thundering herd).
        self._waiters: deque[asyncio.Future[None]] = deque()
        # Instance-seconds: Cloud Run runs ceil(in_flight / concurrency) instances, at most max.
        self._concurrency = max(1, concurrency)
        self._max_instances = max(1, max_instances)
        self._since = time.monotonic()
        self.instance_seconds = 0.0

    def _account(self) -> None:
        now = time.monotonic()
        busy = min(self._max_instances, math.ceil(self.in_flight / self._concurrency))
        self.instance_seconds += (now - self._since) * busy
        self._since = now

    def _take(self) -> None:
        self._account()
        self.in_flight += 1

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._take()
                waiter.set_result(None)

    async def acquire(self) -> int:
        if self.in_flight < self.limit and not self._waiters:
            self._take()
            return self._epoch
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(self._epoch, "other")  # the slot was ours already: give it back
            raise
        return self._epoch

    def release(self, epoch: int, outcome: str) -> None:
        """``outcome``: ``ok``, ``overload`` (429/503) or ``other``."""
        self._account()
        self.in_flight -= 1
        if outcome == "overload" and epoch == self._epoch:
            self._epoch += 1
            self.decreases += 1
            self.limit = max(1, self.limit // 2)
            self._credit = 0
        elif outcome == "ok" and self.limit < self.max_limit:
            self._credit += 1
            if self._credit >= self.limit:
                self._credit = 0
                self.limit += 1
        self._wake()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[list[str]]:
        """Holds one in-flight slot; set ``outcome[0]`` before leaving."""
        epoch = await self.acquire()
        outcome = ["other"]
        try:
            yield outcome
        finally:
            self.release(epoch, outcome[0])


class LatencyHistogram:
    """Log-spaced buckets (2 % wide): fixed memory for any number of samples, quantiles to 2 %."""

    _RATIO = math.log(1.02)

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0

    def add(self, seconds: float) -> None:
        bucket = math.floor(math.log(max(seconds, 1e-6)) / self._RATIO)
        self.buckets[bucket] = self.buckets.get(bucket, 0) + 1
        self.count += 1

    def merge(self, other: LatencyHistogram) -> None:
        for bucket, n in other.buckets.items():
            self.buckets[bucket] = self.buckets.get(bucket, 0) + n
        self.count += other.count

    def quantile(self, q: float) -> float | None:
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                return math.exp((bucket + 0.5) * self._RATIO)
        raise AssertionError("unreachable")


@dataclass
class Outcome:
    ok: bool
    record: dict[str, Any]
    latency_s: float = 0.0
    attempts: int = 0
    prompt_tokens: int = 0
    eval_tokens: int = 0


@dataclass
class EngineStats:
    """Live counters (read by the progress display) and totals for the run."""

    succeeded: int = 0
    failed: int = 0
    retries: int = 0
    done_bytes: int = 0
    prompt_tokens: int = 0
    eval_tokens: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)


class RequestEngine:
    def __init__(
        self,
        backend: Backend,
        limiter: AdaptiveLimiter,
        *,
        max_retries: int,
        backoff_initial_seconds: float,
        backoff_max_seconds: float,
        attempt_timeout_seconds: float,
    ) -> None:
        self.backend = backend
        self.limiter = limiter
        self.stats = EngineStats()
        self._attempt_timeout = attempt_timeout_seconds
        self._retrying = AsyncRetrying(
            stop=stop_after_attempt(max_retries + 1),
            wait=wait_random_exponential(
                multiplier=backoff_initial_seconds, max=backoff_max_seconds
            ),
            retry=retry_if_exception(is_transient),
            reraise=True,
        )

    async def _attempt(self, request: PromptRequest) -> tuple[Completion, float]:
        async with self.limiter.slot() as outcome:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self._attempt_timeout):
                    completion = await self.backend.complete(request)
            except BaseException as exc:
                outcome[0] = "overload" if status_of(exc) in OVERLOAD_STATUS else "other"
                raise
            outcome[0] = "ok"
            return completion, time.perf_counter() - started

    async def run(self, request: PromptRequest) -> Outcome:
        """Send one prompt with retries; never raises for a failed prompt (→ error record)."""
        attempts = 0
        try:
            async for attempt in self._retrying.copy():
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    if attempts > 1:
                        self.stats.retries += 1
                    completion, latency = await self._attempt(request)
        except (Exception, RetryError) as exc:
            self.stats.failed += 1
            self.stats.done_bytes += request.size
            return Outcome(
                False,
                error_record(request, describe(exc), status=status_of(exc), attempts=attempts),
                attempts=attempts,
            )
        stats = self.stats
        stats.succeeded += 1
        stats.done_bytes += request.size
        stats.prompt_tokens += completion.prompt_eval_count
        stats.eval_tokens += completion.eval_count
        stats.latency.add(latency)
        return Outcome(
            True,
            result_record(request, completion, latency, attempts),
            latency,
            attempts,
            completion.prompt_eval_count,
            completion.eval_count,
        )

    async def aclose(self) -> None:
        await self.backend.aclose()
