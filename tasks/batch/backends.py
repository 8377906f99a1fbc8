"""The batch's backends: how one prompt is sent and its answer read, for each API.

- ``OllamaBackend``: Ollama's native API (``/api/generate`` or ``/api/chat``; streamed or not) over
  one aiohttp session, with the official client's bodies and errors.
- ``OpenAIBackend``: any OpenAI-compatible server through the official ``openai.AsyncOpenAI``
  (``/v1/chat/completions``, or ``/v1/completions`` when the batch line named it).

Both take Google ID tokens that refresh however long the run (``TokenSource`` /
``GoogleIdTokenAuth``). Retries, limits and records are the engine's (``tasks.batch.engine``).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import ssl
import sys
from types import ModuleType
from typing import Any, Protocol, cast

import aiohttp
import certifi
import httpx
import ollama
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from tasks.batch.records import Completion, PromptRequest
from tasks.errors import IncompleteResponseError

USER_AGENT = "ollama-cloudrun-batch"


class RejectedError(ollama.ResponseError):
    """An HTTP error answer, as the official client raises it, with its ``Retry-After``."""

    def __init__(self, error: str, status_code: int, retry_after: float | None = None) -> None:
        super().__init__(error, status_code)
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` (RFC 9110 §10.2.3): delay-seconds or an HTTP-date → seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def loaded_openai() -> ModuleType | None:
    """The ``openai`` package once an ``OpenAIBackend`` has imported it, else None (its errors
    come from nowhere else). Imported only for OpenAI mode: it costs ~2 s of CPU, a third of
    the batch's start-up in a fresh process, which Ollama mode never needs."""
    return sys.modules.get("openai")


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
                        raise RejectedError(
                            text or response.reason or "",
                            response.status,
                            parse_retry_after(response.headers.get("Retry-After")),
                        )
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
        import openai  # here, not at the top: see loaded_openai

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
