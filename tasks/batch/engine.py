"""The async request engine: retries around one or several targets (``tasks.batch.lanes``).

- Each target is a lane with its own adaptive in-flight limit (``tasks.batch.limiter``: AIMD,
  halved by its 429/503s), circuit breaker (``tasks.batch.breaker``) and ``Retry-After`` pause;
  ``LanePool`` gives each attempt the least-busy lane that may take it.
- Retries use tenacity (exponential back-off with full jitter, ``stop_after_attempt``): 429, 5xx,
  connection errors/resets, timeouts and an error line mid-stream (``ResponseError`` status -1)
  are retried — on another target when there is one (a request in flight to a target that dies
  is sent again elsewhere); 400, 404 and anything else are not. A request holds no in-flight slot
  while it backs off, so the other prompts keep every slot busy.
- Backends (``tasks.batch.backends``): Ollama's native API over aiohttp, or the official
  ``openai.AsyncOpenAI``; both take ``GoogleIdTokenAuth`` (each target its own audience) so ID
  tokens refresh however long the run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import ollama
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from tasks.batch.backends import RejectedError, loaded_openai, parse_retry_after
from tasks.batch.lanes import Lane, LanePool
from tasks.batch.limiter import LatencyHistogram
from tasks.batch.records import Completion, PromptRequest, error_record, redact, result_record
from tasks.errors import IncompleteResponseError

RETRYABLE_STATUS = frozenset({-1, 408, 429, 500, 502, 503, 504})
OVERLOAD_STATUS = frozenset({429, 503})


def status_of(exc: BaseException) -> int | None:
    if isinstance(exc, ollama.ResponseError):
        return int(exc.status_code)
    openai = loaded_openai()
    if openai is not None and isinstance(exc, openai.APIStatusError):
        return int(exc.status_code)
    return None


def is_transient(exc: BaseException) -> bool:
    status = status_of(exc)
    if status is not None:
        return status in RETRYABLE_STATUS
    openai = loaded_openai()
    if openai is not None and isinstance(exc, openai.APIConnectionError):  # + APITimeoutError
        return True
    return isinstance(
        exc,
        ConnectionError  # nothing answered (the official client raises the builtin too)
        | aiohttp.ClientConnectionError  # resets, server disconnects, socket timeouts
        | aiohttp.ClientPayloadError  # a body cut short
        | httpx.TransportError  # (OpenAI mode) timeouts, resets, RemoteProtocolError
        | IncompleteResponseError
        | TimeoutError,
    )


def retry_after_of(exc: BaseException) -> float | None:
    """Seconds a 429/503 asked us to wait (its ``Retry-After``), if it said."""
    if isinstance(exc, RejectedError):
        return exc.retry_after
    openai = loaded_openai()
    if openai is not None and isinstance(exc, openai.APIStatusError):
        return parse_retry_after(exc.response.headers.get("retry-after"))
    return None


def describe(exc: BaseException) -> str:
    if isinstance(exc, ollama.ResponseError):
        return redact(
            f"HTTP {exc.status_code}: {exc.error}"
            if exc.status_code != -1
            else f"error line mid-stream: {exc.error}"
        )
    text = str(exc) or type(exc).__name__
    return redact(f"{type(exc).__name__}: {text}")


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
        lanes: Sequence[Lane],
        *,
        max_retries: int,
        backoff_initial_seconds: float,
        backoff_max_seconds: float,
        attempt_timeout_seconds: float,
    ) -> None:
        self.pool = LanePool(lanes)
        self.lanes = self.pool.lanes
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

    # The lanes' limits together, for the progress line and the manifest.
    @property
    def in_flight(self) -> int:
        return sum(lane.limiter.in_flight for lane in self.lanes)

    @property
    def limit(self) -> int:
        return sum(lane.limiter.limit for lane in self.lanes)

    @property
    def max_limit(self) -> int:
        return sum(lane.limiter.max_limit for lane in self.lanes)

    @property
    def backoffs(self) -> int:
        return sum(lane.limiter.decreases for lane in self.lanes)

    async def _attempt(
        self, request: PromptRequest, tried: list[Lane]
    ) -> tuple[Completion, float, Lane]:
        """One attempt on the lane the pool gives (not the last one that failed, if it can)."""
        lane, epoch = await self.pool.acquire(tried[-1] if tried else None)
        tried.append(lane)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._attempt_timeout):
                completion = await lane.backend.complete(request)
        except asyncio.CancelledError:
            self.pool.release(lane, epoch, "other", healthy=None)  # no verdict on the target
            raise
        except BaseException as exc:
            status = status_of(exc)
            lane.stats.failed += 1
            self.pool.release(
                lane,
                epoch,
                "overload" if status in OVERLOAD_STATUS else "other",
                healthy=status == 429 or not is_transient(exc),
                pause_seconds=retry_after_of(exc) if status in OVERLOAD_STATUS else None,
            )
            raise
        latency = time.perf_counter() - started
        lane.stats.ok += 1
        lane.stats.latency.add(latency)
        self.pool.release(lane, epoch, "ok", healthy=True)
        return completion, latency, lane

    async def run(self, request: PromptRequest) -> Outcome:
        """Send one prompt with retries; never raises for a failed prompt (→ error record)."""
        attempts = 0
        tried: list[Lane] = []
        try:
            async for attempt in self._retrying.copy():
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    if attempts > 1:
                        self.stats.retries += 1
                        tried[-1].stats.retried += 1
                    completion, latency, _ = await self._attempt(request, tried)
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
        for lane in self.lanes:
            await lane.backend.aclose()
