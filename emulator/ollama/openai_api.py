"""OpenAI-compatible routes, as Ollama's ``middleware/openai.go`` translates them.

Requests become native chat/generate jobs; errors become
``{"error": {"message", "type", "param", "code"}}`` with the type chosen by status.
Streaming is SSE: ``data: {chunk}\\n\\n`` ... ``data: [DONE]\\n\\n`` (finish chunk with an empty
delta, then a usage chunk when ``stream_options.include_usage``; Ollama ≥ 0.32.6).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from emulator.ollama.answers import rendering_errors, respond, state_of
from emulator.ollama.engine import Done, Job, Message, Piece
from emulator.ollama.errors import OllamaError, model_not_found
from emulator.ollama.options import GenOptions, parse_options
from emulator.ollama.service import EmulatorState, Inference, ResetRequested, start_inference
from emulator.ollama.wire import (
    JSON_TYPE,
    SSE_TYPE,
    abort_connection,
    dumps,
    field_bool,
    field_str,
    read_json,
)


def openai_error_body(status: int, message: str) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def openai_error(exc: OllamaError) -> Response:
    return Response(
        dumps(openai_error_body(exc.status, exc.message)),
        status_code=exc.status,
        media_type=JSON_TYPE,
    )


openai = rendering_errors(openai_error)


def _options(data: dict[str, Any]) -> GenOptions:
    """OpenAI fields → Ollama options; temperature and top_p default to 1.0 here."""
    raw: dict[str, Any] = {"temperature": 1.0, "top_p": 1.0}
    for src, dst in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("seed", "seed"),
        ("max_tokens", "num_predict"),
        ("frequency_penalty", "frequency_penalty"),
        ("presence_penalty", "presence_penalty"),
    ):
        value = data.get(src)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise OllamaError(400, f"invalid value for {src}: {value!r}")
            raw[dst] = value
    stop = data.get("stop")
    if isinstance(stop, str):
        raw["stop"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        raw["stop"] = stop
    elif stop is not None:
        raise OllamaError(400, "invalid type for 'stop' field")
    return parse_options(raw)


def _format(data: dict[str, Any]) -> str | dict[str, Any] | None:
    spec = data.get("response_format")
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise OllamaError(400, "invalid response_format")
    kind = spec.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (spec.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise OllamaError(400, "invalid JSON schema in response format")
        return schema
    if kind in (None, "text"):
        return None
    raise OllamaError(400, f"invalid response format type: {kind}")


def _content(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            if not isinstance(part, dict):
                raise OllamaError(400, "invalid message content type")
            if part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                raise OllamaError(400, "this model does not support image input")
            else:
                raise OllamaError(400, f"invalid message part type: {part.get('type')}")
        return "".join(parts)
    raise OllamaError(400, "invalid message content type")


def _usage(done: Done) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_eval_count,
        "completion_tokens": done.eval_count,
        "total_tokens": done.prompt_eval_count + done.eval_count,
    }


def _include_usage(data: dict[str, Any]) -> bool:
    options = data.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _sse(value: Any) -> bytes:
    return b"data: " + dumps(value) + b"\n\n"


async def _prepare(
    request: Request, struct_name: str
) -> tuple[EmulatorState, dict[str, Any], str, int]:
    t0 = time.perf_counter_ns()
    state = state_of(request)
    data = await read_json(request, struct_name)
    name = field_str(data, "model", struct_name)
    return state, data, name, t0


async def answer(
    request: Request,
    inference: Inference,
    stream: bool,
    whole: Callable[[str, Done], Response],
    chunk: Callable[[Piece | Done], list[dict[str, Any]]],
) -> Response:
    """``whole(text, done)``, or server-sent events with ``chunk`` rendering each event."""
    return await respond(
        request,
        inference.events,
        stream=stream,
        whole=whole,
        streamed=lambda first: _sse_response(request, first, inference.events, chunk),
    )


def _sse_response(
    request: Request,
    first: Piece | Done,
    events: AsyncIterator[Piece | Done],
    chunk: Callable[[Piece | Done], list[dict[str, Any]]],
) -> Response:
    async def body() -> AsyncIterator[bytes]:
        try:
            for item in chunk(first):
                yield _sse(item)
            async for event in events:
                for item in chunk(event):
                    yield _sse(item)
            yield b"data: [DONE]\n\n"
        except OllamaError as exc:
            yield _sse(openai_error_body(exc.status, exc.message))
        except ResetRequested:
            abort_connection(request.scope)
            await asyncio.sleep(0)
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    return StreamingResponse(body(), media_type=SSE_TYPE)


@openai
async def chat_completions(request: Request) -> Response:
    state, data, name, t0 = await _prepare(request, "ChatCompletionRequest")
    raw_messages = data.get("messages")
    if not isinstance(raw_messages, list):
        raise OllamaError(400, "invalid request: messages must be an array")
    if not raw_messages:
        raise OllamaError(400, "[] is too short - 'messages'")
    messages = []
    for item in raw_messages:
        if not isinstance(item, dict):
            raise OllamaError(400, "invalid message")
        messages.append(Message(str(item.get("role", "")).lower(), _content(item.get("content"))))
    stream = field_bool(data, "stream", "ChatCompletionRequest", False)
    if not name:
        raise OllamaError(400, "model is required")
    entry = state.catalog.lookup(name)
    if entry is None:
        raise model_not_found(name)
    if data.get("tools"):
        raise OllamaError(400, f"{entry.name.full} does not support tools")
    job = Job(
        messages=tuple(messages),
        prompt="",
        options=_options(data),
        format=_format(data),
        stream=stream,
    )
    inference = await start_inference(state, entry, job, None, t0)
    ident = f"chatcmpl-{random.randrange(999)}"
    created = int(time.time())
    base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": name,
            "system_fingerprint": "fp_ollama"}  # fmt: skip

    def whole(text: str, done: Done) -> Response:
        reason = done.done_reason if done.done_reason in ("stop", "length") else "stop"
        body = {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": reason,
                }
            ],
            "usage": _usage(done),
        }
        return Response(dumps(body), media_type=JSON_TYPE)

    include_usage = _include_usage(data)

    def chunk(event: Piece | Done) -> list[dict[str, Any]]:
        if isinstance(event, Piece):
            delta = {"role": "assistant", "content": event.text}
            return [{**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}]
        out: list[dict[str, Any]] = [
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": event.done_reason}]}
        ]
        if include_usage:
            out.append({**base, "choices": [], "usage": _usage(event)})
        return out

    return await answer(request, inference, stream, whole, chunk)


@openai
async def completions(request: Request) -> Response:
    state, data, name, t0 = await _prepare(request, "CompletionRequest")
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        kind = "array" if isinstance(prompt, list) else type(prompt).__name__
        raise OllamaError(
            400,
            f"json: cannot unmarshal {kind} into Go struct field CompletionRequest.prompt "
            "of type string",
        )
    if data.get("suffix"):
        raise OllamaError(400, "suffix is not supported by this model")
    stream = field_bool(data, "stream", "CompletionRequest", False)
    if not name:
        raise model_not_found(name)
    entry = state.catalog.lookup(name)
    if entry is None:
        raise model_not_found(name)
    job = Job(
        messages=(Message("user", prompt),),
        prompt=prompt,
        options=_options(data),
        stream=stream,
    )
    inference = await start_inference(state, entry, job, None, t0)
    ident = f"cmpl-{random.randrange(999)}"
    base = {"id": ident, "object": "text_completion", "created": int(time.time()), "model": name,
            "system_fingerprint": "fp_ollama"}  # fmt: skip

    def whole(text: str, done: Done) -> Response:
        body = {
            **base,
            "choices": [{"text": text, "index": 0, "finish_reason": done.done_reason}],
            "usage": _usage(done),
        }
        return Response(dumps(body), media_type=JSON_TYPE)

    include_usage = _include_usage(data)

    def chunk(event: Piece | Done) -> list[dict[str, Any]]:
        if isinstance(event, Piece):
            return [{**base, "choices": [{"text": event.text, "index": 0, "finish_reason": None}]}]
        out: list[dict[str, Any]] = [
            {**base, "choices": [{"text": "", "index": 0, "finish_reason": event.done_reason}]}
        ]
        if include_usage:
            out.append({**base, "choices": [], "usage": _usage(event)})
        return out

    return await answer(request, inference, stream, whole, chunk)


def _model_object(name: str, modified_ns: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": modified_ns // 1_000_000_000,
            "owned_by": "library"}  # fmt: skip


@openai
async def list_models(request: Request) -> Response:
    state = state_of(request)
    data = [_model_object(e.display, e.modified_at_ns) for e in state.catalog.entries()]
    return Response(dumps({"object": "list", "data": data or None}), media_type=JSON_TYPE)


@openai
async def retrieve_model(request: Request) -> Response:
    state = state_of(request)
    name = request.path_params["model"]
    entry = state.catalog.lookup(name)
    if entry is None:
        raise model_not_found(name)
    return Response(dumps(_model_object(entry.display, entry.modified_at_ns)), media_type=JSON_TYPE)
