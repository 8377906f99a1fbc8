"""Encoding as Ollama's Go server writes it: compact JSON, RFC3339Nano UTC times, Go errors."""

from __future__ import annotations

import contextlib
import functools
import socket
import struct
import time
from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from emulator.ollama.errors import OllamaError

JSON_TYPE = "application/json; charset=utf-8"
NDJSON_TYPE = "application/x-ndjson"
SSE_TYPE = "text/event-stream"
TEXT_TYPE = "text/plain; charset=utf-8"


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


@functools.lru_cache(maxsize=4)
def _second(secs: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))


def rfc3339(ns: int | None = None, *, seconds: float | None = None) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: trailing zeros of the fraction dropped."""
    if ns is None:
        ns = time.time_ns() if seconds is None else int(seconds * 1e9)
    secs, frac = divmod(ns, 1_000_000_000)
    text = _second(secs)
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def json_response(value: Any, status: int = 200) -> Response:
    return Response(dumps(value), status_code=status, media_type=JSON_TYPE)


def error_response(error: OllamaError) -> Response:
    return json_response({"error": error.message}, error.status)


def _go_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if value is None:
        return "null"
    return "object"


async def read_json(request: Request, struct_name: str) -> dict[str, Any]:
    """Bind the body as gin's ShouldBindJSON does; errors are 400 with Go-like texts."""
    raw = await request.body()
    if not raw.strip():
        raise OllamaError(400, "missing request body")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        stripped = raw.strip()
        if stripped[:1] not in b'{["-0123456789tfn':
            char = stripped[:1].decode("utf-8", "replace")
            message = f"invalid character '{char}' looking for beginning of value"
            raise OllamaError(400, message) from exc
        if exc.pos >= len(raw.rstrip()):
            raise OllamaError(400, "unexpected EOF") from exc
        char = raw[exc.pos : exc.pos + 1].decode("utf-8", "replace")
        raise OllamaError(400, f"invalid character '{char}' in JSON input") from exc
    if not isinstance(data, dict):
        raise OllamaError(
            400,
            f"json: cannot unmarshal {_go_kind(data)} into Go value of type api.{struct_name}",
        )
    return data


def field_str(data: Mapping[str, Any], key: str, struct_name: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise OllamaError(
            400,
            f"json: cannot unmarshal {_go_kind(value)} into Go struct field "
            f"{struct_name}.{key} of type string",
        )
    return value


def field_bool(data: Mapping[str, Any], key: str, struct_name: str, default: bool) -> bool:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise OllamaError(
            400,
            f"json: cannot unmarshal {_go_kind(value)} into Go struct field "
            f"{struct_name}.{key} of type bool",
        )
    return value


def field_list(data: Mapping[str, Any], key: str, struct_name: str, go_type: str) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise OllamaError(
            400,
            f"json: cannot unmarshal {_go_kind(value)} into Go struct field "
            f"{struct_name}.{key} of type {go_type}",
        )
    return value


# ---------------------------------------------------------------------------------------------
# Connection resets (fault injection): abort the TCP connection with RST.


class TransportCapture:
    """Outermost ASGI layer: remember uvicorn's transport so a handler can reset the connection.

    uvicorn passes its per-request ``send`` as a bound method of the cycle, which holds the
    transport. Written by hand because ASGI has no standard way to abort a connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            owner = getattr(send, "__self__", None)
            scope["emulator.transport"] = getattr(owner, "transport", None)
        await self.app(scope, receive, send)


def abort_connection(scope: Scope) -> bool:
    """Reset the client's TCP connection (SO_LINGER 0 + abort). False if impossible here."""
    transport = scope.get("emulator.transport")
    if transport is None:
        return False
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    return True
