"""The batch's data: one input line parsed into a request (or a problem), and the output records.

Output records are JSON objects, one per line:

- result: ``id, response, model, done_reason, prompt_eval_count, eval_count, total_duration,
  load_duration, prompt_eval_duration, eval_duration`` (Ollama's names; durations in nanoseconds,
  ``null`` when the server did not report them, e.g. in OpenAI mode), ``latency_s`` (client side,
  last attempt), ``attempts`` (HTTP attempts in this run), ``tries`` (runs that sent the id, this
  one included: ``max_attempts_per_id`` bounds it), ``file`` and ``line`` (where the prompt came
  from).
- error: ``id, error`` (the reason), ``status`` (HTTP status, -1 for an error line mid-stream, null
  for bad input or a transport failure), ``kind`` (``input`` or ``request``), ``attempts``,
  ``tries`` (0 for bad input: nothing was sent), ``file`` and ``line``.

Every record carries ``schema_version`` (``RECORD_SCHEMA_VERSION``): 2 since ``tries``,
``created`` and the OpenAI fields; records without it are version 1 and still read (one try,
zero for input errors). A reader refuses a version it does not know (``check_schema_version``).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

from tasks.errors import SchemaVersionError

RECORD_SCHEMA_VERSION = 2
KNOWN_RECORD_VERSIONS = frozenset({1, 2})

# Anything that looks like a bearer token or a JWT never reaches a record or a log line.
_SECRET_RE = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
    r"|ya29\.[A-Za-z0-9._-]+"
)


Endpoint = Literal["chat", "completions"]


def redact(text: str) -> str:
    """``text`` with bearer tokens, JWTs and OAuth access tokens replaced by ``[REDACTED]``."""
    return _SECRET_RE.sub(lambda m: (m.group(1) or "") + "[REDACTED]", text)


@dataclass(frozen=True, slots=True)
class PromptRequest:
    """One prompt to send: ``prompt`` (generate) or ``messages`` (chat), never both."""

    id: str
    file: str
    line: int
    size: int  # bytes of the input line, newline included (progress is measured in bytes)
    prompt: str | None = None
    messages: tuple[dict[str, Any], ...] | None = None
    system: str | None = None
    options: dict[str, Any] | None = None
    format: str | dict[str, Any] | None = None
    # The OpenAI endpoint an OpenAI batch line named (``chat`` or ``completions``); None: the
    # backend's default (natively: prompt → generate, messages → chat; OpenAI mode: chat).
    endpoint: Endpoint | None = None
    tries: int = 1  # runs that sent this id, this one included
    openai: bool = False  # from an OpenAI batch line (its results default to OpenAI's format)


@dataclass(frozen=True, slots=True)
class InputProblem:
    """A line that cannot become a request: it is reported as an error record, never dropped."""

    id: str
    file: str
    line: int
    size: int
    reason: str


@dataclass(frozen=True, slots=True)
class Completion:
    """What the server answered, in Ollama's terms."""

    text: str
    model: str
    done_reason: str | None = None
    prompt_eval_count: int = 0
    eval_count: int = 0
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_duration: int | None = None
    eval_duration: int | None = None


def result_record(
    request: PromptRequest, completion: Completion, latency_s: float, attempts: int
) -> dict[str, Any]:
    return {
        "schema_version": RECORD_SCHEMA_VERSION,
        "id": request.id,
        "response": completion.text,
        "model": completion.model,
        "done_reason": completion.done_reason,
        "prompt_eval_count": completion.prompt_eval_count,
        "eval_count": completion.eval_count,
        "total_duration": completion.total_duration,
        "load_duration": completion.load_duration,
        "prompt_eval_duration": completion.prompt_eval_duration,
        "eval_duration": completion.eval_duration,
        "latency_s": round(latency_s, 6),
        "attempts": attempts,
        "tries": request.tries,
        "file": request.file,
        "line": request.line,
        "created": int(time.time()),
        **_openai_fields(request),
    }


def _openai_fields(request: PromptRequest) -> dict[str, Any]:
    """What OpenAI's batch output format needs beyond the native record (only for such lines)."""
    if not request.openai:
        return {}
    return {"openai": True, "endpoint": request.endpoint or "chat"}


def error_record(
    item: PromptRequest | InputProblem,
    reason: str,
    *,
    status: int | None = None,
    attempts: int = 0,
) -> dict[str, Any]:
    return {
        "schema_version": RECORD_SCHEMA_VERSION,
        "id": item.id,
        "error": redact(reason),
        "status": status,
        "kind": "input" if isinstance(item, InputProblem) else "request",
        "attempts": attempts,
        "tries": item.tries if isinstance(item, PromptRequest) else 0,
        "file": item.file,
        "line": item.line,
        **(_openai_fields(item) if isinstance(item, PromptRequest) else {}),
    }


def check_schema_version(obj: dict[str, Any], what: str, known: frozenset[int]) -> int:
    """The object's ``schema_version`` (1 when absent: written before versions existed), or
    ``SchemaVersionError`` when this code does not know it."""
    version = obj.get("schema_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version not in known:
        raise SchemaVersionError(
            f"{what} has schema_version {version!r}, which this ollama-cloudrun does not know "
            f"(it reads {', '.join(map(str, sorted(known)))}); it was written by a newer "
            "version: upgrade ollama-cloudrun to read it"
        )
    return version


def tries_of(record: dict[str, Any]) -> int:
    """Runs that sent the record's id (records from before ``tries``: 1, input errors 0)."""
    tries = record.get("tries")
    if isinstance(tries, int) and not isinstance(tries, bool):
        return tries
    return 0 if record.get("kind") == "input" else 1


def error_kind(record: dict[str, Any]) -> str:
    """What went wrong, coarsely, for counting: ``HTTP 500``, ``error line mid-stream``,
    ``ClientConnectionError``, ``input: malformed JSON``, ..."""
    reason = str(record.get("error", ""))
    status = record.get("status")
    if record.get("kind") == "input":
        return "input: " + reason.split(":", 1)[0].split(" (", 1)[0][:60]
    if isinstance(status, int) and status > 0:
        return f"HTTP {status}"
    return reason.split(":", 1)[0][:60] or "unknown"


def encode_records(records: list[dict[str, Any]]) -> bytes:
    """JSONL bytes; ASCII-escaped so any text (even a lone surrogate) round-trips."""
    return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode("ascii")
