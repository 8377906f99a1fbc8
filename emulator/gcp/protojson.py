"""Google's JSON for messages and times: camelCase names, enum names, no default values.

Handlers may return a dict, a proto-plus message or a protobuf message; all become the JSON the
REST clients parse. A long-running operation packs its metadata and response as `Any`s.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any, TypeAlias

import proto
from google.protobuf import json_format
from google.protobuf.message import Message as PbMessage

from emulator.gcp.errors import invalid_argument

JsonMessage: TypeAlias = proto.Message | PbMessage | dict[str, Any]


def _pb(message: proto.Message | PbMessage) -> PbMessage:
    if isinstance(message, proto.Message):
        pb: PbMessage = type(message).pb(message)
        return pb
    return message


def message_to_json(message: JsonMessage) -> dict[str, Any]:
    """A message as Google's JSON renders it (a dict is returned unchanged)."""
    if isinstance(message, dict):
        return message
    return json_format.MessageToDict(_pb(message), preserving_proto_field_name=False)


def any_json(message: JsonMessage) -> dict[str, Any]:
    """A message packed as a JSON `google.protobuf.Any` (with its real `@type` URL).

    A dict must already carry its `@type`.
    """
    if isinstance(message, dict):
        if "@type" not in message:
            raise ValueError("a dict packed into an Any needs an '@type'")
        return message
    pb = _pb(message)
    return {"@type": f"type.googleapis.com/{pb.DESCRIPTOR.full_name}", **message_to_json(pb)}


def parse_message(cls: type[Any], body: dict[str, Any]) -> Any:
    """Parse a JSON request body into a proto-plus class; bad input is a 400 like Google's."""
    try:
        return cls.from_json(json.dumps(body), ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise invalid_argument(f"Invalid JSON payload received. {exc}") from exc


def parse_pb(body: dict[str, Any], message: PbMessage) -> PbMessage:
    """Parse a JSON request body into a protobuf message in place; bad input is a 400."""
    try:
        json_format.ParseDict(body, message)
    except json_format.ParseError as exc:
        raise invalid_argument(f"Invalid JSON payload received. {exc}") from exc
    return message


def rfc3339(ts: float) -> str:
    """A timestamp as Google's JSON writes it."""
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))
    return f"{base}.{int(ts * 1_000_000) % 1_000_000:06d}Z"


def utc(seconds: float) -> datetime:
    """Emulator-clock seconds as the aware datetime proto-plus Timestamp fields take."""
    return datetime.fromtimestamp(seconds, tz=UTC)
