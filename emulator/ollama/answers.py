"""What the native and the OpenAI handlers share: their error rendering, the emulator's state,
and the tail of every generation: the whole answer, or a stream.

The stream starts only once the first event is there, so a reset fault drawn before the first
byte aborts the connection (the client sees a reset, not a 200 with nothing in it).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from emulator.ollama.engine import Done, Piece
from emulator.ollama.errors import OllamaError
from emulator.ollama.service import EmulatorState, ResetRequested
from emulator.ollama.wire import abort_connection

Handler = Callable[[Request], Awaitable[Response]]


def rendering_errors(render: Callable[[OllamaError], Response]) -> Callable[[Handler], Handler]:
    """A decorator: the handler's ``OllamaError`` becomes ``render(error)``."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except OllamaError as exc:
                return render(exc)

        return wrapped

    return decorate


def state_of(request: Request) -> EmulatorState:
    state: EmulatorState = request.app.state.emulator
    return state


async def collect(events: AsyncIterator[Piece | Done]) -> tuple[str, Done]:
    parts: list[str] = []
    done: Done | None = None
    async for event in events:
        if isinstance(event, Piece):
            parts.append(event.text)
        else:
            done = event
    assert done is not None, "engine ended without a Done event"
    return "".join(parts), done


def reset_response(request: Request) -> Response:
    abort_connection(request.scope)
    return Response(b"", status_code=500)


async def respond(
    request: Request,
    events: AsyncIterator[Piece | Done],
    *,
    stream: bool,
    whole: Callable[[str, Done], Response],
    streamed: Callable[[Piece | Done], Response],
) -> Response:
    """``whole(text, done)`` when not streaming, else ``streamed(first_event)``."""
    try:
        if not stream:
            text, done = await collect(events)
            return whole(text, done)
        first = await events.__anext__()
    except ResetRequested:
        return reset_response(request)
    return streamed(first)
