"""Input: find the prompt files, stream their lines, parse each line into a request or a problem.

Accepted files: ``.jsonl``/``.ndjson``/``.json`` (one JSON object a line) and ``.txt`` (one prompt
a line). A JSONL line is either Ollama-style — ``prompt`` (generate) or ``messages`` (chat), with
optional ``id``, ``system``, ``options``, ``format`` — or an OpenAI batch line (``custom_id``,
``body`` with ``messages`` or ``prompt``; ``body.model`` is ignored, the batch's model is used):
its ``method`` and ``url``, when given, must be ``POST`` and ``/v1/chat/completions`` (``messages``)
or ``/v1/completions`` (``prompt``), and the request goes to the matching endpoint.
A leading UTF-8 byte order mark is not part of the first line.

Ids: ``id``/``custom_id`` when given; otherwise ``<file key>:<line number>``, where the file key is
the file's path relative to the input's directory (the prefix, the glob's fixed part, or the
directory holding a single file), so ``gs://b/p/a.jsonl`` and ``gs://b/p/`` give the same ids.
Blank lines are counted and skipped. Everything else that cannot be sent becomes an
``InputProblem`` carrying its line number.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tasks.batch.records import Endpoint, InputProblem, PromptRequest
from tasks.batch.stores import GcsStore, LocalStore, ObjectStore, open_store, split_gs_uri
from tasks.errors import BatchInputError

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".txt": "txt"}
_GLOB_CHARS = "*?[{"  # Cloud Storage's matchGlob syntax (tasks.batch.stores.glob_regex)
# OpenAI request body fields that map onto Ollama options.
_OPENAI_OPTIONS = {
    "max_tokens": "num_predict",
    "max_completion_tokens": "num_predict",
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}


@dataclass(frozen=True, slots=True)
class InputFile:
    store: ObjectStore
    name: str  # within the store
    size: int
    format: str  # "jsonl" | "txt"

    @property
    def uri(self) -> str:
        return self.store.uri_of(self.name)

    @property
    def key(self) -> str:
        return self.name


def _format_of(name: str) -> str | None:
    return FORMATS.get(Path(name).suffix.lower())


def split_glob(path: str) -> tuple[str, str | None]:
    """``a/b/*.jsonl`` → (``a/b/``, ``*.jsonl``); no glob → (path, None)."""
    parts = path.split("/")
    for index, part in enumerate(parts):
        if any(c in part for c in _GLOB_CHARS):
            base = "/".join(parts[:index])
            return (base + "/" if base else ""), "/".join(parts[index:])
    return path, None


def resolve_inputs(
    spec: str, storage_client: Any = None, exclude: str | None = None
) -> list[InputFile]:
    """The files ``spec`` names: one object/file, everything under a prefix/directory, or a glob.

    ``exclude`` (the output location) is never read as input. Raises ``BatchInputError`` when
    nothing matches or a single named file has an unsupported type.
    """
    if spec.startswith("gs://"):
        bucket, path = split_gs_uri(spec)
        base, pattern = split_glob(path)
        root = "gs://" + bucket + "/"
    else:
        if "://" in spec:
            raise BatchInputError(
                f"unsupported input {spec!r}: use gs://bucket/path or a local path"
            )
        absolute = str(Path(spec).expanduser().absolute())
        base, pattern = split_glob(absolute.lstrip("/"))
        root = "/"
    files: list[InputFile] = []
    if pattern is None:
        single = _single_file(root, base, storage_client)
        if single is not None:
            return [single]
        base = base.rstrip("/") + "/"
    store = open_store(root + base, storage_client)
    skipped: list[str] = []
    for info in store.list(match_glob=pattern):
        if exclude and store.uri_of(info.name).startswith(exclude.rstrip("/") + "/"):
            continue
        fmt = _format_of(info.name)
        if fmt is None:
            skipped.append(info.name)
            continue
        files.append(InputFile(store, info.name, info.size, fmt))
    if not files:
        hint = f" (ignored, unsupported type: {', '.join(skipped[:5])})" if skipped else ""
        raise BatchInputError(f"no input files match {spec!r}{hint}; expected {', '.join(FORMATS)}")
    return files


def _single_file(root: str, path: str, storage_client: Any) -> InputFile | None:
    if not path or path.endswith("/"):
        return None
    parent, _, name = path.rpartition("/")
    store = open_store(root + (parent + "/" if parent else ""), storage_client)
    if isinstance(store, LocalStore) and not (store.root / name).is_file():
        return None
    info = store.stat(name)
    if info is None:
        return None
    fmt = _format_of(name)
    if fmt is None:
        raise BatchInputError(
            f"unsupported input file {store.uri_of(name)!r}; expected {', '.join(FORMATS)}"
        )
    assert isinstance(store, GcsStore | LocalStore)
    return InputFile(store, name, info.size, fmt)


def iter_lines(
    stream: IO[bytes], max_line_bytes: int, chunk_bytes: int = 1024 * 1024
) -> Iterator[tuple[int, bytes | None, int]]:
    """``(line number, content or None when longer than max_line_bytes, size with newline)``.

    Memory stays within ``chunk_bytes + max_line_bytes`` whatever the file or line length.
    """
    buffer = bytearray()
    line_no = 0
    oversized = 0  # bytes of an oversized line discarded so far
    while True:
        chunk = stream.read(chunk_bytes)
        if not chunk:
            break
        buffer += chunk
        start = 0
        while (newline := buffer.find(b"\n", start)) >= 0:
            line_no += 1
            length = newline - start
            if oversized or length > max_line_bytes:
                yield line_no, None, oversized + length + 1
                oversized = 0
            else:
                yield line_no, bytes(buffer[start:newline]), length + 1
            start = newline + 1
        del buffer[:start]
        if len(buffer) > max_line_bytes:
            oversized += len(buffer)
            buffer.clear()
    if buffer or oversized:
        line_no += 1
        if oversized or len(buffer) > max_line_bytes:
            yield line_no, None, oversized + len(buffer)
        else:
            yield line_no, bytes(buffer), len(buffer)


def derived_id(file: InputFile, line: int) -> str:
    return f"{file.key}:{line}"


def parse_line(
    file: InputFile, line: int, raw: bytes | None, size: int, max_line_bytes: int
) -> PromptRequest | InputProblem | None:
    """One input line → a request, a problem (with the reason), or None for a blank line."""

    def problem(reason: str, id_: str | None = None) -> InputProblem:
        return InputProblem(id_ or derived_id(file, line), file.uri, line, size, reason)

    if raw is None:
        return problem(f"line longer than {max_line_bytes} bytes (oversized line)")
    if line == 1:
        raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return problem(f"invalid UTF-8 at byte {exc.start} of the line")
    text = text.removesuffix("\r")
    if not text.strip():
        return None
    if file.format == "txt":
        return PromptRequest(derived_id(file, line), file.uri, line, size, prompt=text)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return problem(f"malformed JSON: {exc.msg} at column {exc.colno}")
    if not isinstance(obj, dict):
        return problem(f"expected a JSON object, got {type(obj).__name__}")
    try:
        return _request_from_object(obj, file, line, size)
    except _BadLine as exc:
        return problem(str(exc), exc.id)


class _BadLine(Exception):
    def __init__(self, reason: str, id_: str | None) -> None:
        super().__init__(reason)
        self.id = id_


def _id_of(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _BadLine(f"'{key}' must be a string or an integer", None)
    text = str(value)
    if not text:
        raise _BadLine(f"'{key}' must not be empty", None)
    return text


def _request_from_object(
    obj: dict[str, Any], file: InputFile, line: int, size: int
) -> PromptRequest:
    if "custom_id" in obj or "body" in obj:
        id_ = _id_of(obj, "custom_id")
        body = obj.get("body")
        if not isinstance(body, dict):
            raise _BadLine("OpenAI batch line without an object 'body'", id_)
        endpoint = _openai_endpoint(obj, body, id_)
        _refuse_unsent_fields(body, id_)
        options = {o: body[k] for k, o in _OPENAI_OPTIONS.items() if body.get(k) is not None}
        fields: dict[str, Any] = {
            "prompt": body.get("prompt"),
            "messages": body.get("messages"),
            "options": options or None,
            "format": _format_from_response_format(body.get("response_format"), id_),
            "endpoint": endpoint,
            "openai": True,
        }
    else:
        id_ = _id_of(obj, "id")
        fields = {k: obj.get(k) for k in ("prompt", "messages", "system", "options", "format")}
    return _validated(fields, id_ or derived_id(file, line), file, line, size, id_)


# What of an OpenAI request body is sent: the rest is refused by name, never dropped silently.
_OPENAI_SENT = {"model", "messages", "prompt", "response_format", *_OPENAI_OPTIONS}
_OPENAI_DEFAULTS = {"n": 1, "stream": False, "logprobs": False}  # harmless when left so


def _refuse_unsent_fields(body: dict[str, Any], id_: str | None) -> None:
    unsent = sorted(
        key
        for key, value in body.items()
        if key not in _OPENAI_SENT
        and not (key in _OPENAI_DEFAULTS and value in (None, _OPENAI_DEFAULTS[key]))
    )
    if unsent:
        raise _BadLine(
            f"OpenAI request field{'s' if len(unsent) > 1 else ''} "
            f"{', '.join(repr(k) for k in unsent)} cannot be sent by this batch (it sends "
            f"{', '.join(sorted(_OPENAI_SENT - {'model'}))}; 'model' is the batch's); remove "
            "or change the line",
            id_,
        )


# The OpenAI batch endpoints a line may name, and the body field each one takes.
OPENAI_ENDPOINTS: dict[str, tuple[Endpoint, str]] = {
    "/v1/chat/completions": ("chat", "messages"),
    "/v1/completions": ("completions", "prompt"),
}


def _openai_endpoint(obj: dict[str, Any], body: dict[str, Any], id_: str | None) -> Endpoint | None:
    """``chat`` or ``completions`` as the line's ``method``/``url`` ask; None when it names none."""
    method, url = obj.get("method"), obj.get("url")
    if method is None and url is None:
        return None
    known = OPENAI_ENDPOINTS.get(url) if isinstance(url, str) else None
    wrong_method = method is not None and (not isinstance(method, str) or method.upper() != "POST")
    if known is None or wrong_method:
        raise _BadLine(
            f"unsupported OpenAI batch request {method or 'POST'} {url}: only POST "
            f"{' and POST '.join(OPENAI_ENDPOINTS)} can be sent",
            id_,
        )
    endpoint, takes = known
    other = "prompt" if takes == "messages" else "messages"
    if body.get(other) is not None:
        raise _BadLine(f"{url} takes '{takes}', not '{other}'", id_)
    if endpoint == "completions" and body.get("response_format") is not None:
        raise _BadLine(f"{url} takes no 'response_format'", id_)
    return endpoint


def _format_from_response_format(value: Any, id_: str | None) -> str | dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, dict):
        if value.get("type") == "json_object":
            return "json"
        schema = (value.get("json_schema") or {}).get("schema")
        if value.get("type") == "json_schema" and isinstance(schema, dict):
            return schema
        if value.get("type") == "text":
            return None
    raise _BadLine("unsupported 'response_format'", id_)


def _validated(
    fields: dict[str, Any], id_: str, file: InputFile, line: int, size: int, given: str | None
) -> PromptRequest:
    prompt, messages = fields.get("prompt"), fields.get("messages")
    if prompt is None and messages is None:
        raise _BadLine("missing prompt: expected 'prompt' or 'messages'", given)
    if prompt is not None and messages is not None:
        raise _BadLine("both 'prompt' and 'messages' given; use one", given)
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise _BadLine("'prompt' must be a non-empty string", given)
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            raise _BadLine("'messages' must be a non-empty list", given)
        for index, message in enumerate(messages):
            if not (
                isinstance(message, dict)
                and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)
            ):
                raise _BadLine(f"messages[{index}] needs string 'role' and 'content'", given)
    system, options, fmt = fields.get("system"), fields.get("options"), fields.get("format")
    if system is not None and not isinstance(system, str):
        raise _BadLine("'system' must be a string", given)
    if options is not None and not isinstance(options, dict):
        raise _BadLine("'options' must be an object", given)
    if fmt is not None and fmt != "json" and not isinstance(fmt, dict):
        raise _BadLine("'format' must be \"json\" or a JSON schema object", given)
    return PromptRequest(
        id_,
        file.uri,
        line,
        size,
        prompt=prompt,
        messages=tuple(messages) if messages is not None else None,
        system=system,
        options=options,
        format=fmt or None,
        endpoint=fields.get("endpoint"),
        openai=bool(fields.get("openai")),
    )
