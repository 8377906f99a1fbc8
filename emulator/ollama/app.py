"""The HTTP layer: the whole route table in ``build_app``; handlers parse, call, serialise.

Native routes answer like Ollama's gin server; ``emulator.ollama.openai_api`` holds the
OpenAI-compatible ones. Control routes live under ``/_emulator/`` (a prefix Ollama never uses).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from emulator.ollama import openai_api
from emulator.ollama.answers import rendering_errors, respond, state_of
from emulator.ollama.config import keep_alive_from_json
from emulator.ollama.control import control_faults, control_reset, control_state
from emulator.ollama.engine import Done, Job, Message, Piece, check_format
from emulator.ollama.errors import OllamaError, model_not_found
from emulator.ollama.options import parse_options
from emulator.ollama.request_log import RequestLog
from emulator.ollama.scheduler import Runner
from emulator.ollama.service import EmulatorState, ResetRequested, start_inference
from emulator.ollama.wire import (
    NDJSON_TYPE,
    TEXT_TYPE,
    TransportCapture,
    abort_connection,
    dumps,
    error_response,
    field_bool,
    field_list,
    field_str,
    json_response,
    read_json,
    rfc3339,
)

VERSION = "0.33.0"

# Render OllamaError as ``{"error": "..."}`` with its status.
native = rendering_errors(error_response)


def parse_keep_alive(data: dict[str, Any]) -> float | None:
    try:
        return keep_alive_from_json(data.get("keep_alive"))
    except ValueError as exc:
        raise OllamaError(400, str(exc)) from exc


def reject_thinking(data: dict[str, Any], display: str) -> None:
    think = data.get("think")
    if think is None or think is False:
        return
    if isinstance(think, bool) or think in ("low", "medium", "high", "max"):
        raise OllamaError(400, f'"{display}" does not support thinking')
    raise OllamaError(400, f"json: invalid think value: {think!r}")


# ---------------------------------------------------------------------------------------------
# Streaming


def ndjson_stream(
    request: Request,
    first: Piece | Done,
    events: AsyncIterator[Piece | Done],
    render: Callable[[Piece | Done], bytes],
) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        try:
            yield render(first)
            async for event in events:
                yield render(event)
        except OllamaError as exc:
            # After the first byte the status is fixed: Ollama writes one error line.
            yield dumps({"error": exc.message}) + b"\n"
        except ResetRequested:
            abort_connection(request.scope)
            await asyncio.sleep(0)
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    return StreamingResponse(body(), media_type=NDJSON_TYPE)


def metrics(done: Done, total_ns: int, load_ns: int) -> dict[str, int]:
    """The nanosecond metrics in Go struct order; zero values are omitted (omitempty)."""
    values = {
        "total_duration": total_ns,
        "load_duration": load_ns,
        "prompt_eval_count": done.prompt_eval_count,
        "prompt_eval_duration": done.prompt_eval_duration,
        "eval_count": done.eval_count,
        "eval_duration": done.eval_duration,
    }
    return {key: value for key, value in values.items() if value}


# ---------------------------------------------------------------------------------------------
# Native endpoints


async def root(request: Request) -> Response:
    return PlainTextResponse("Ollama is running", media_type=TEXT_TYPE)


async def version(request: Request) -> Response:
    return json_response({"version": VERSION})


async def respond_native(
    request: Request,
    events: AsyncIterator[Piece | Done],
    *,
    stream: bool,
    piece: Callable[[str], dict[str, Any]],
    final: Callable[[Done, str], dict[str, Any]],
) -> Response:
    """One JSON body, or NDJSON: a ``piece`` per generated text, then the ``final`` chunk."""

    def render(event: Piece | Done) -> bytes:
        body = piece(event.text) if isinstance(event, Piece) else final(event, "")
        return dumps(body) + b"\n"

    return await respond(
        request,
        events,
        stream=stream,
        whole=lambda text, done: json_response(final(done, text)),
        streamed=lambda first: ndjson_stream(request, first, events, render),
    )


@native
async def generate(request: Request) -> Response:
    t0 = time.perf_counter_ns()
    state = state_of(request)
    data = await read_json(request, "GenerateRequest")
    name = field_str(data, "model", "GenerateRequest")
    prompt = field_str(data, "prompt", "GenerateRequest")
    system = field_str(data, "system", "GenerateRequest")
    template = field_str(data, "template", "GenerateRequest")
    suffix = field_str(data, "suffix", "GenerateRequest")
    raw = field_bool(data, "raw", "GenerateRequest", False)
    stream = field_bool(data, "stream", "GenerateRequest", True)
    context = field_list(data, "context", "GenerateRequest", "[]int")
    images = field_list(data, "images", "GenerateRequest", "[]api.ImageData")
    keep_alive = parse_keep_alive(data)
    if raw and (template or system or context):
        raise OllamaError(400, "raw mode does not support template, system, or context")
    entry = state.catalog.lookup(name) if name else None
    if entry is None:
        raise model_not_found(name)
    if suffix:
        raise OllamaError(400, f"{entry.name.full} does not support insert")
    reject_thinking(data, name)
    if images:
        raise OllamaError(400, f'"{name}" does not support vision')
    if template:
        raise OllamaError(
            501, "the ollama-cloudrun emulator does not implement 'template' overrides"
        )
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in context):
        raise OllamaError(
            400, "json: cannot unmarshal into Go struct field GenerateRequest.context of type int"
        )
    options = parse_options(data.get("options"))
    fmt = check_format(data.get("format"))
    now = rfc3339()
    if not prompt and keep_alive == 0:
        await state.scheduler.unload(entry)
        return json_response(
            {"model": name, "created_at": now, "response": "", "done": True,
             "done_reason": "unload"}
        )  # fmt: skip
    if not prompt:
        runner = await state.scheduler.acquire(entry, options.num_ctx, keep_alive)
        state.scheduler.release(runner)
        return json_response(
            {"model": name, "created_at": rfc3339(), "response": "", "done": True,
             "done_reason": "load"}
        )  # fmt: skip
    messages = None
    if not raw:
        messages = (*((Message("system", system),) if system else ()), Message("user", prompt))
    job = Job(
        messages=messages,
        prompt=prompt,
        options=options,
        format=fmt,
        context=tuple(context),
        stream=stream,
    )
    inference = await start_inference(state, entry, job, keep_alive, t0)
    events = inference.events

    def final(done: Done, text: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": name,
            "created_at": rfc3339(),
            "response": text,
            "done": True,
            "done_reason": done.done_reason,
        }
        if not raw and done.context:
            body["context"] = list(done.context)
        body.update(metrics(done, time.perf_counter_ns() - t0, inference.load_ns))
        return body

    def piece(text: str) -> dict[str, Any]:
        return {"model": name, "created_at": rfc3339(), "response": text, "done": False}

    return await respond_native(request, events, stream=stream, piece=piece, final=final)


def parse_messages(raw: list[Any]) -> tuple[Message, ...]:
    messages: list[Message] = []
    for item in raw:
        if not isinstance(item, dict):
            raise OllamaError(
                400, "json: cannot unmarshal into Go struct field ChatRequest.messages"
            )
        role = field_str(item, "role", "Message").lower()
        content = field_str(item, "content", "Message")
        messages.append(Message(role, content))
    return tuple(messages)


@native
async def chat(request: Request) -> Response:
    t0 = time.perf_counter_ns()
    state = state_of(request)
    data = await read_json(request, "ChatRequest")
    name = field_str(data, "model", "ChatRequest")
    stream = field_bool(data, "stream", "ChatRequest", True)
    raw_messages = field_list(data, "messages", "ChatRequest", "[]api.Message")
    tools = field_list(data, "tools", "ChatRequest", "api.Tools")
    keep_alive = parse_keep_alive(data)
    if not name:
        raise OllamaError(400, "model is required")
    messages = parse_messages(raw_messages)
    entry = state.catalog.lookup(name)
    if entry is None:
        raise model_not_found(name)
    if tools:
        raise OllamaError(400, f"{entry.name.full} does not support tools")
    reject_thinking(data, name)
    if any(isinstance(m, dict) and m.get("images") for m in raw_messages):
        raise OllamaError(400, f'"{name}" does not support vision')
    options = parse_options(data.get("options"))
    fmt = check_format(data.get("format"))
    empty = {"role": "assistant", "content": ""}
    if not messages and keep_alive == 0:
        await state.scheduler.unload(entry)
        return json_response(
            {"model": name, "created_at": rfc3339(), "message": empty, "done": True,
             "done_reason": "unload"}
        )  # fmt: skip
    if not messages:
        runner: Runner = await state.scheduler.acquire(entry, options.num_ctx, keep_alive)
        state.scheduler.release(runner)
        return json_response(
            {"model": name, "created_at": rfc3339(), "message": empty, "done": True,
             "done_reason": "load"}
        )  # fmt: skip
    job = Job(messages=messages, prompt="", options=options, format=fmt, stream=stream)
    inference = await start_inference(state, entry, job, keep_alive, t0)
    events = inference.events

    def final(done: Done, text: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": name,
            "created_at": rfc3339(),
            "message": {"role": "assistant", "content": text},
            "done": True,
            "done_reason": done.done_reason,
        }
        body.update(metrics(done, time.perf_counter_ns() - t0, inference.load_ns))
        return body

    def piece(text: str) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        return {"model": name, "created_at": rfc3339(), "message": message, "done": False}

    return await respond_native(request, events, stream=stream, piece=piece, final=final)


@native
async def tags(request: Request) -> Response:
    state = state_of(request)
    models = []
    for entry in state.catalog.entries():
        facts = await state.facts(entry)
        models.append(
            {
                "name": entry.display,
                "model": entry.display,
                "modified_at": rfc3339(entry.modified_at_ns),
                "size": facts.size,
                "digest": entry.digest,
                "details": facts.details(),
            }
        )
    return json_response({"models": models})


@native
async def show(request: Request) -> Response:
    state = state_of(request)
    data = await read_json(request, "ShowRequest")
    name = field_str(data, "model", "ShowRequest") or field_str(data, "name", "ShowRequest")
    if not name:
        raise OllamaError(400, "model is required")
    entry = state.catalog.lookup(name)
    if entry is None:
        raise model_not_found(name)
    facts = await state.facts(entry)
    body: dict[str, Any] = {}
    for key, value in (
        ("license", facts.license),
        ("modelfile", facts.modelfile),
        ("parameters", facts.parameters),
        ("template", facts.template),
        ("system", facts.system),
    ):
        if value:
            body[key] = value
    body["details"] = facts.details()
    body["model_info"] = facts.model_info
    body["capabilities"] = facts.capabilities
    body["modified_at"] = rfc3339(entry.modified_at_ns)
    return json_response(body)


@native
async def ps(request: Request) -> Response:
    state = state_of(request)
    models = []
    for runner in state.scheduler.loaded():
        facts = await state.facts(runner.entry)
        models.append(
            {
                "name": runner.entry.display,
                "model": runner.entry.display,
                "size": runner.model.size,
                "digest": runner.entry.digest,
                "details": facts.details(),
                "expires_at": rfc3339(seconds=runner.expires_at),
                "size_vram": 0,
                "context_length": runner.model.context_length,
            }
        )
    return json_response({"models": models})


@native
async def pull(request: Request) -> Response:
    state = state_of(request)
    data = await read_json(request, "PullRequest")
    name = field_str(data, "model", "PullRequest") or field_str(data, "name", "PullRequest")
    stream = field_bool(data, "stream", "PullRequest", True)
    if not name:
        raise OllamaError(400, "model is required")
    entry = state.installable(name)
    missing = "pull model manifest: file does not exist"
    if entry is None and not stream:
        raise OllamaError(500, missing)
    lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
    if entry is None:
        lines.append({"error": missing})
    else:
        facts = await state.facts(entry)
        layer = "sha256:" + entry.digest
        progress: dict[str, Any] = {"status": f"pulling {layer[7:19]}", "digest": layer}
        if facts.size:
            progress.update(total=facts.size, completed=facts.size)
        lines += [
            progress,
            {"status": "verifying sha256 digest"},
            {"status": "writing manifest"},
            {"status": "removing unused layers"},
            {"status": "success"},
        ]
    if not stream:
        return json_response(lines[-1])

    async def body() -> AsyncIterator[bytes]:
        for line in lines:
            yield dumps(line) + b"\n"

    return StreamingResponse(body(), media_type=NDJSON_TYPE)


def not_implemented(method: str, path: str) -> Route:
    async def handler(request: Request) -> Response:
        return json_response(
            {"error": f"{method} {path} is not implemented by the ollama-cloudrun emulator"}, 501
        )

    return Route(path, handler, methods=[method])


# ---------------------------------------------------------------------------------------------


async def _not_found(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException) and exc.status_code == 405:
        return PlainTextResponse("405 method not allowed", 405, media_type=TEXT_TYPE)
    return PlainTextResponse("404 page not found", 404, media_type=TEXT_TYPE)


def build_app(state: EmulatorState) -> TransportCapture:
    """The route table of the whole server."""
    request_log = RequestLog()
    routes = [
        Route("/", root, methods=["GET"]),  # HEAD is added by Starlette for GET routes
        Route("/api/version", version, methods=["GET"]),
        Route("/api/tags", tags, methods=["GET"]),
        Route("/api/ps", ps, methods=["GET"]),
        Route("/api/show", show, methods=["POST"]),
        Route("/api/generate", generate, methods=["POST"]),
        Route("/api/chat", chat, methods=["POST"]),
        Route("/api/pull", pull, methods=["POST"]),
        Route("/v1/chat/completions", openai_api.chat_completions, methods=["POST"]),
        Route("/v1/completions", openai_api.completions, methods=["POST"]),
        Route("/v1/models", openai_api.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", openai_api.retrieve_model, methods=["GET"]),
        not_implemented("POST", "/api/embed"),
        not_implemented("POST", "/api/embeddings"),
        not_implemented("POST", "/api/create"),
        not_implemented("POST", "/api/copy"),
        not_implemented("DELETE", "/api/delete"),
        not_implemented("POST", "/api/push"),
        not_implemented("POST", "/api/blobs/{digest}"),
        not_implemented("HEAD", "/api/blobs/{digest}"),
        not_implemented("POST", "/v1/embeddings"),
        not_implemented("POST", "/v1/responses"),
        not_implemented("POST", "/v1/messages"),
        Route("/_emulator/faults", control_faults, methods=["POST"]),
        Route("/_emulator/reset", control_reset, methods=["POST"]),
        Route("/_emulator/state", control_state, methods=["GET"]),
        Route("/_emulator/requests", request_log.endpoint, methods=["GET"]),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await state.scheduler.shutdown()

    app = Starlette(
        routes=routes,
        exception_handlers={404: _not_found, 405: _not_found},
        lifespan=lifespan,
    )
    app.state.emulator = state
    request_log.app = app
    return TransportCapture(request_log)
