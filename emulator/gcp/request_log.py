"""The emulator's request log: every Google API call it answered, for tests and operators.

An ASGI middleware around the app records method, raw path, query, request body, status and
response body of each call to an emulated Google API (not the control endpoints under
`/_emulator/`, the OAuth token endpoint, the metadata server or the JWKS, which are credentials
plumbing; tokens are never recorded: headers are not kept). It serves the log itself:

- `GET /_emulator/requests` → `{"requests": [...]}`, oldest first (`?since=N` skips the first N);
- `DELETE /_emulator/requests` clears it, and so does `POST /_emulator/reset`.

Bounded (the newest `LIMIT` entries, bodies cut at `BODY_LIMIT` bytes), so a long-lived stack
cannot grow without end. Used by the discovery-document conformance test and by anyone who
wants to see which calls a flow made (e.g. that a plan made no write call).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from typing import Any
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

LIMIT = 20_000
BODY_LIMIT = 256 * 1024
LOG_PATH = "/_emulator/requests"
# Credentials plumbing, not Google APIs under test (emulator/gcp/auth serves them).
# Cloud Storage is fake-gcs-server's (emulator/gcp/storage_front.py relays it): its bodies are
# object bytes, and the discovery judge's scope is the control plane (tests/gcp/discovery.py).
UNLOGGED_PREFIXES = (
    *("/_emulator/", "/token", "/computeMetadata/", "/oauth2/"),
    *("/storage/v1/", "/upload/storage/v1/", "/download/storage/v1/"),
)


def _decode(body: bytes) -> Any:
    if not body:
        return None
    if len(body) > BODY_LIMIT:
        return {"truncated": len(body)}
    try:
        return json.loads(body)
    except ValueError:
        return {"non_json_bytes": len(body)}


class RequestLog:
    """ASGI middleware that records Google API exchanges and serves them at `LOG_PATH`."""

    def __init__(self, app: ASGIApp, limit: int = LIMIT) -> None:
        self.app = app
        self._entries: deque[dict[str, Any]] = deque(maxlen=limit)
        self._count = 0  # entries ever recorded, so `since` survives the deque's rotation
        self._lock = threading.Lock()

    def entries(self, since: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            first = self._count - len(self._entries)
            return [e for i, e in enumerate(self._entries, start=first) if i >= since]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._count = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path == LOG_PATH:
            await self._serve(scope, send)
            return
        if path == "/_emulator/reset" and scope["method"] == "POST":
            self.clear()
        if path == "/" or path.startswith(UNLOGGED_PREFIXES):
            await self.app(scope, receive, send)
            return
        await self._record(scope, receive, send)

    async def _record(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_body = bytearray()
        response_body = bytearray()
        status = 0

        async def receive_and_keep() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                request_body.extend(message.get("body", b""))
            return message

        async def send_and_keep(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                response_body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive_and_keep, send_and_keep)
        finally:
            raw_path = scope.get("raw_path") or scope["path"].encode()
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            entry = {
                "method": scope["method"],
                "path": raw_path.decode("latin-1").split("?", 1)[0],
                "query": query,
                "request": _decode(bytes(request_body)),
                "status": status,
                "response": _decode(bytes(response_body)),
            }
            with self._lock:
                self._entries.append(entry)
                self._count += 1

    async def _serve(self, scope: Scope, send: Send) -> None:
        if scope["method"] == "DELETE":
            self.clear()
            payload: dict[str, Any] = {}
        else:
            params = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            since = int(params.get("since", ["0"])[0] or 0)
            payload = {"requests": self.entries(since)}
        body = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
