"""The async request engine: one HTTP client with keep-alive, an adaptive in-flight limit, retries.

- ``AdaptiveLimiter`` (AIMD, written here in ~40 lines because no maintained asyncio library on
  PyPI adapts a concurrency limit): at most ``limit`` requests in flight; a 429/503 halves the
  limit — once per congestion epoch, so a burst of rejections sent at the old limit counts once —
  and every ``limit`` successes add one back, up to the configured maximum.
- Retries use tenacity (exponential back-off with full jitter, ``stop_after_attempt``): 429, 5xx,
  connection errors/resets, timeouts and an error line mid-stream (``ResponseError`` status -1)
  are retried; 400, 404 and anything else are not. A request holds no in-flight slot while it
  backs off, so the other prompts keep every slot busy.
- Backends: ``OllamaBackend`` (Ollama's native API over aiohttp; generate or chat, streamed or not)
  and ``OpenAIBackend`` (the official ``openai.AsyncOpenAI``, chat completions). Both take
  ``GoogleIdTokenAuth`` so ID tokens refresh however long the run.
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import aiohttp
import certifi
import httpx
import ollama
import openai
from aiohttp.helpers import get_env_proxy_for_url
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from yarl import URL

from tasks.batch.records import (
    Completion,
    PromptRequest,
    error_record,
    redact,
    result_record,
)

USER_AGENT = "ollama-cloudrun-batch"
RETRYABLE_STATUS = frozenset({-1, 408, 429, 500, 502, 503, 504})
OVERLOAD_STATUS = frozenset({429, 503})


class IncompleteResponseError(Exception):
    """The stream ended without its final ``done`` chunk (the connection was cut)."""


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


class Backend(Protocol):
    async def complete(self, request: PromptRequest) -> Completion: ...
    async def aclose(self) -> None: ...


def _messages(request: PromptRequest) -> list[dict[str, Any]]:
    messages = [dict(m) for m in request.messages or ()]
    if request.prompt is not None:
        messages = [{"role": "user", "content": request.prompt}]
    if request.system and not any(m.get("role") == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": request.system})
    return messages


class TokenSource(Protocol):
    """Bearer tokens for every request (``tasks.id_tokens.GoogleIdTokenAuth``)."""

    async def aget_token(self) -> str: ...
    async def arefresh(self, rejected: str) -> str: ...


class OllamaBackend:
    """Ollama's native API, ``/api/generate`` or ``/api/chat``, over one aiohttp session.

    aiohttp rather than the official client (httpx): a third of the client CPU per request (1.0
    against 3.2 ms in tests/bench/bench_batch.py), which is what keeps every slot busy when the
    client shares its cores. The wire and the errors are the official client's: the same JSON
    bodies, ``ollama.ResponseError`` with the HTTP status (-1 for an error line mid-stream), and
    a ``ConnectionError`` when nothing answers. A 401 fetches a new token once and sends again.
    """

    def __init__(
        self,
        host: str,
        model: str,
        *,
        connect_timeout_seconds: float,
        read_timeout_seconds: float,
        tokens: TokenSource | None,
        max_connections: int,
        stream: bool = False,
    ) -> None:
        self.model = model
        self.stream = stream
        self._base = host.rstrip("/")
        self._tokens = tokens
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_seconds, sock_read=read_timeout_seconds
        )
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Made on first use: an aiohttp session belongs to the running event loop.
        if self._session is None:
            # certifi's CAs and the proxy variables, as httpx (and so the official client) uses.
            tls = ssl.create_default_context(cafile=certifi.where())
            proxy, proxy_auth = _env_proxy(self._base)
            self._session = aiohttp.ClientSession(
                proxy=proxy,
                proxy_auth=proxy_auth,
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections, limit_per_host=0, ssl=tls
                ),
                timeout=self._timeout,
                headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
                read_bufsize=1 << 20,  # one streamed line must fit (a token, or a final chunk)
                raise_for_status=False,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _body(self, request: PromptRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": self.model, "stream": self.stream}
        if request.messages is None:
            path = "/api/generate"
            body["prompt"] = request.prompt or ""
            if request.system is not None:
                body["system"] = request.system
        else:
            path = "/api/chat"
            body["messages"] = _messages(request)
        if request.options is not None:
            body["options"] = request.options
        if request.format is not None:
            body["format"] = request.format
        return path, body

    async def complete(self, request: PromptRequest) -> Completion:
        path, body = self._body(request)
        payload = json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        token = await self._tokens.aget_token() if self._tokens is not None else None
        for attempt in (1, 2):
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            try:
                async with self._open().post(
                    self._base + path, data=payload, headers=headers
                ) as response:
                    if response.status == 401 and token is not None and attempt == 1:
                        await response.read()  # keep the connection for the next request
                        assert self._tokens is not None
                        token = await self._tokens.arefresh(token)
                        continue
                    if response.status >= 400:
                        text = (await response.read()).decode("utf-8", "replace")
                        raise ollama.ResponseError(text or response.reason or "", response.status)
                    chat = request.messages is not None
                    if self.stream:
                        return await self._read_stream(response, chat=chat)
                    body = json.loads(await response.read())
                    return self._completion(body, _text(body, chat))
            except aiohttp.ClientConnectorError:
                raise ConnectionError(f"cannot connect to {self._base}") from None
        raise AssertionError("unreachable")

    async def _read_stream(self, response: aiohttp.ClientResponse, *, chat: bool) -> Completion:
        parts: list[str] = []
        async for line in response.content:
            if not line.strip():
                continue
            chunk = json.loads(line)
            if error := chunk.get("error"):
                raise ollama.ResponseError(str(error))  # status -1: the official client's too
            parts.append(_text(chunk, chat))
            if chunk.get("done"):
                return self._completion(chunk, "".join(parts))
        raise IncompleteResponseError("the stream ended before its final chunk")

    def _completion(self, body: dict[str, Any], text: str) -> Completion:
        if error := body.get("error"):
            raise ollama.ResponseError(str(error))
        return Completion(
            text=text,
            model=body.get("model") or self.model,
            done_reason=body.get("done_reason"),
            prompt_eval_count=body.get("prompt_eval_count") or 0,
            eval_count=body.get("eval_count") or 0,
            total_duration=body.get("total_duration"),
            load_duration=body.get("load_duration"),
            prompt_eval_duration=body.get("prompt_eval_duration"),
            eval_duration=body.get("eval_duration"),
        )


def _env_proxy(url: str) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """``HTTP(S)_PROXY``/``NO_PROXY`` for ``url``, read once: aiohttp's ``trust_env`` reads them
    for every request, which doubles the client's CPU per prompt."""
    try:
        return get_env_proxy_for_url(URL(url))
    except LookupError:
        return None, None


def _text(chunk: dict[str, Any], chat: bool) -> str:
    if chat:
        return str((chunk.get("message") or {}).get("content") or "")
    return str(chunk.get("response") or "")


_OPENAI_OPTIONS = {
    "num_predict": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}


class OpenAIBackend:
    """Any OpenAI-compatible server through the official client: ``<base>/v1/chat/completions``,
    or ``<base>/v1/completions`` for a request whose OpenAI batch line named that url."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str,
        timeout: httpx.Timeout,
        auth: httpx.Auth | None,
        max_connections: int,
    ) -> None:
        self.model = model
        self._http = httpx.AsyncClient(
            auth=auth,
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
        self._client = openai.AsyncOpenAI(  # accepts an httpx (or its own httpx2) client
            base_url=base_url,
            api_key=api_key,
            max_retries=0,
            timeout=cast(Any, timeout),
            http_client=cast(Any, self._http),
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def complete(self, request: PromptRequest) -> Completion:
        kwargs: dict[str, Any] = {
            _OPENAI_OPTIONS[k]: v
            for k, v in (request.options or {}).items()
            if k in _OPENAI_OPTIONS
        }
        if request.format == "json":
            kwargs["response_format"] = {"type": "json_object"}
        elif isinstance(request.format, dict):
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": request.format},
            }
        if request.endpoint == "completions":
            return await self._complete_text(request, kwargs)
        messages: Any = _messages(request)
        response = await self._client.chat.completions.create(
            model=self.model, messages=messages, **kwargs
        )
        choice = response.choices[0] if response.choices else None
        if choice is None:
            raise IncompleteResponseError("the response has no choices")
        return self._completion(
            choice.message.content, response.model, choice.finish_reason, response.usage
        )

    async def _complete_text(self, request: PromptRequest, kwargs: dict[str, Any]) -> Completion:
        """``/v1/completions``: what an OpenAI batch line with that url asked for."""
        response = await self._client.completions.create(
            model=self.model, prompt=request.prompt or "", **kwargs
        )
        choice = response.choices[0] if response.choices else None
        if choice is None:
            raise IncompleteResponseError("the response has no choices")
        return self._completion(choice.text, response.model, choice.finish_reason, response.usage)

    def _completion(
        self, text: str | None, model: str | None, finish_reason: str | None, usage: Any
    ) -> Completion:
        return Completion(
            text=text or "",
            model=model or self.model,
            done_reason=finish_reason,
            prompt_eval_count=usage.prompt_tokens if usage else 0,
            eval_count=usage.completion_tokens if usage else 0,
        )


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
