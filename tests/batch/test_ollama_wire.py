"""The batch's aiohttp Ollama backend on the wire: the same answers and the same errors as the
official ``ollama`` client, against the sim engine (and a small server for the 401 case)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import aiohttp
import httpx
import ollama
import pytest
from aiohttp import web

from emulator.ollama.launcher import OllamaServer
from tasks.batch.backends import OllamaBackend, OpenAIBackend
from tasks.batch.engine import is_transient
from tasks.batch.records import Completion, PromptRequest

GENERATE = PromptRequest(
    "g", "f", 1, 1, prompt="Why is the sky blue?", system="Be brief.", options={"seed": 3}
)
CHAT = PromptRequest(
    "c",
    "f",
    2,
    1,
    messages=({"role": "user", "content": "Name a colour."},),
    system="Answer in JSON.",
    format="json",
)


def _backend(url: str, *, stream: bool, model: str = "gemma2:9b", **kw: Any) -> OllamaBackend:
    return OllamaBackend(
        url,
        model,
        connect_timeout_seconds=kw.pop("connect", 5.0),
        read_timeout_seconds=kw.pop("read", 30.0),
        tokens=kw.pop("tokens", None),
        max_connections=4,
        stream=stream,
    )


async def _complete(backend: OllamaBackend, request: PromptRequest) -> Completion:
    try:
        return await backend.complete(request)
    finally:
        await backend.aclose()


async def _official(url: str, request: PromptRequest) -> tuple[str, Any]:
    client = ollama.AsyncClient(host=url)
    if request.messages is None:
        answer: Any = await client.generate(
            "gemma2:9b", request.prompt or "", system=request.system, options=request.options
        )
        return answer.response, answer
    messages = [{"role": "system", "content": request.system}, *request.messages]
    answer = await client.chat("gemma2:9b", messages=messages, format=request.format)
    return answer.message.content or "", answer


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("request_", [GENERATE, CHAT], ids=["generate", "chat"])
def test_answers_match_the_official_client(
    sim_ollama: OllamaServer, request_: PromptRequest, stream: bool
) -> None:
    ours = asyncio.run(_complete(_backend(sim_ollama.base_url, stream=stream), request_))
    text, official = asyncio.run(_official(sim_ollama.base_url, request_))
    assert ours.text == text and text
    assert ours.model == official.model
    assert ours.done_reason == official.done_reason
    assert ours.prompt_eval_count == official.prompt_eval_count
    assert ours.eval_count == official.eval_count > 0
    assert ours.total_duration is not None and ours.eval_duration is not None


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_a_404_that_is_not_retried(sim_ollama: OllamaServer, stream: bool) -> None:
    backend = _backend(sim_ollama.base_url, stream=stream, model="no-such-model")
    with pytest.raises(ollama.ResponseError) as info:
        asyncio.run(_complete(backend, GENERATE))
    assert info.value.status_code == 404 and "not found" in info.value.error
    assert not is_transient(info.value)


def test_a_bad_request_is_a_400_that_is_not_retried(sim_ollama: OllamaServer) -> None:
    backend = _backend(sim_ollama.base_url, stream=False, model="")  # chat: "model is required"
    with pytest.raises(ollama.ResponseError) as info:
        asyncio.run(_complete(backend, CHAT))
    assert info.value.status_code == 400 and info.value.error == "model is required"
    assert not is_transient(info.value)


@pytest.mark.parametrize(
    ("fault", "stream", "expected"),
    [
        ("OLLAMA_SIM_FAULT_503", False, 503),
        ("OLLAMA_SIM_FAULT_500", False, 500),
        ("OLLAMA_SIM_FAULT_MIDSTREAM", True, -1),
        ("OLLAMA_SIM_FAULT_RESET", False, None),
        ("OLLAMA_SIM_FAULT_RESET", True, None),
        ("OLLAMA_SIM_FAULT_STALL", False, None),
    ],
)
def test_every_injected_fault_is_raised_as_transient(
    sim_server: Callable[..., OllamaServer], fault: str, stream: bool, expected: int | None
) -> None:
    server = sim_server(**{fault: "1", "OLLAMA_SIM_STALL_SECONDS": "5"})
    backend = _backend(server.base_url, stream=stream, read=0.5)
    with pytest.raises(Exception) as info:
        asyncio.run(_complete(backend, GENERATE))
    assert is_transient(info.value), repr(info.value)
    if expected is not None:
        assert isinstance(info.value, ollama.ResponseError)
        assert info.value.status_code == expected


def test_nothing_listening_is_a_transient_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = _backend(f"http://127.0.0.1:{port}", stream=False)
    with pytest.raises(ConnectionError) as info:
        asyncio.run(_complete(backend, GENERATE))
    assert is_transient(info.value)


class RotatingTokens:
    """Hands out ``t1`` and, when it is rejected, ``t2``."""

    def __init__(self) -> None:
        self.refreshed: list[str] = []

    async def aget_token(self) -> str:
        return "t2" if self.refreshed else "t1"

    async def arefresh(self, rejected: str) -> str:
        self.refreshed.append(rejected)
        return "t2"


async def _with_auth_server(accepted: str, body: Callable[[str], Any]) -> tuple[Any, list[str]]:
    seen: list[str] = []

    async def generate(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != f"Bearer {accepted}":
            return web.json_response({"error": "unauthorized"}, status=401)
        payload = await request.json()
        return web.json_response(
            {"model": payload["model"], "response": "ok", "done": True, "done_reason": "stop"}
        )

    app = web.Application()
    app.router.add_post("/api/generate", generate)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        return await body(f"http://127.0.0.1:{port}"), seen
    finally:
        await runner.cleanup()


def test_a_401_fetches_a_new_token_once_and_sends_again() -> None:
    tokens = RotatingTokens()

    async def run(url: str) -> Completion:
        return await _complete(_backend(url, stream=False, tokens=tokens), GENERATE)

    completion, seen = asyncio.run(_with_auth_server("t2", run))
    assert completion.text == "ok"
    assert seen == ["Bearer t1", "Bearer t2"]
    assert tokens.refreshed == ["t1"]


def test_a_second_401_is_an_error_that_is_not_retried() -> None:
    tokens = RotatingTokens()

    async def run(url: str) -> Completion:
        return await _complete(_backend(url, stream=False, tokens=tokens), GENERATE)

    with pytest.raises(ollama.ResponseError) as info:
        asyncio.run(_with_auth_server("never", run))
    assert info.value.status_code == 401 and info.value.error == "unauthorized"
    assert not is_transient(info.value)


def test_the_backend_keeps_one_session_with_keep_alive(sim_ollama: OllamaServer) -> None:
    async def run() -> int:
        backend = _backend(sim_ollama.base_url, stream=False)
        try:
            await asyncio.gather(*(backend.complete(GENERATE) for _ in range(20)))
            connector = backend._session.connector  # type: ignore[union-attr]
            assert isinstance(connector, aiohttp.TCPConnector)
            return sum(len(v) for v in connector._conns.values())
        finally:
            await backend.aclose()

    assert 1 <= asyncio.run(run()) <= 4  # idle keep-alive connections, at most the limit


def test_the_proxy_variables_are_honoured_and_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.batch.backends import _env_proxy

    monkeypatch.setenv("HTTPS_PROXY", "http://user:pw@proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    proxy, auth = _env_proxy("https://ollama-gemma-abc-uc.a.run.app")
    assert str(proxy) == "http://proxy.internal:3128"
    assert auth is not None and auth.login == "user"
    assert _env_proxy("http://127.0.0.1:11434") == (None, None)


class RecordPaths(httpx.Auth):
    """An ``httpx.Auth`` (where ID tokens plug in) that notes every path the client sends to."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        self.paths.append(request.url.path)
        yield request


def test_openai_mode_sends_each_request_to_the_endpoint_its_line_named(
    sim_ollama: OllamaServer,
) -> None:
    seen = RecordPaths()
    backend = OpenAIBackend(
        sim_ollama.base_url + "/v1",
        "gemma2:9b",
        api_key="unused",
        timeout=httpx.Timeout(30.0),
        auth=seen,
        max_connections=2,
    )
    text = PromptRequest("t", "f", 3, 1, prompt="Say one word.", endpoint="completions")
    named_chat = replace(CHAT, endpoint="chat")

    async def run() -> list[Completion]:
        try:
            return [await backend.complete(r) for r in (text, named_chat, GENERATE, CHAT)]
        finally:
            await backend.aclose()

    completions = asyncio.run(run())
    assert seen.paths == ["/v1/completions"] + ["/v1/chat/completions"] * 3
    assert all(c.text and c.eval_count > 0 for c in completions)
