"""A log of the generation requests the server received: ``GET /_emulator/requests``.

Tests check what a client really sent (e.g. that an OpenAI request's ``tools`` or
``response_format`` reached the server) without trusting the client's own account. Only the
generation endpoints are logged, newest last, at most ``LIMIT`` entries: ``{"method", "path",
"body"}`` with the body as parsed JSON (or ``null`` when it was not JSON). An emulator-only
endpoint under ``/_emulator/`` (a prefix Ollama never uses).
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from emulator.ollama.wire import json_response

LOGGED_PATHS = frozenset({"/api/generate", "/api/chat", "/v1/chat/completions", "/v1/completions"})
LIMIT = 10_000


class RequestLog:
    """ASGI layer that records each generation request's body as it is read."""

    def __init__(self, app: ASGIApp | None = None) -> None:
        self.app = app  # set once the app (whose routes include ``endpoint``) exists
        self.entries: deque[dict[str, Any]] = deque(maxlen=LIMIT)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None, "RequestLog.app is set by build_app"
        if scope["type"] != "http" or scope.get("path") not in LOGGED_PATHS:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []

        async def logging_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    self._record(scope, b"".join(chunks))
            return message

        await self.app(scope, logging_receive, send)

    def _record(self, scope: Scope, raw: bytes) -> None:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.entries.append({"method": scope.get("method"), "path": scope["path"], "body": body})

    async def endpoint(self, request: Request) -> Response:
        return json_response({"requests": list(self.entries)})
