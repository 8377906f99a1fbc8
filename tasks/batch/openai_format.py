"""Native batch records → OpenAI's batch output format (result and error file lines).

The line is OpenAI's ``BatchRequestOutput`` (openapi.yaml, "The per-line object of the batch
output and error files"): ``{"id", "custom_id", "response": {"status_code", "request_id",
"body"}, "error": null}`` for a result, ``{"id", "custom_id", "response": null, "error":
{"code", "message"}}`` for an error. ``response.body`` is a ``chat.completion`` (or, for lines
that named ``/v1/completions``, a ``text_completion``) as the official ``openai`` package's
``ChatCompletion``/``Completion`` models parse it, ``usage`` included. Ids are derived from the
record's id, so the same output always gives the same file.
"""

from __future__ import annotations

import hashlib
from typing import Any

_FINISH = {"stop": "stop", "length": "length"}


def _token(id_: str) -> str:
    return hashlib.blake2b(id_.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


def _usage(record: dict[str, Any]) -> dict[str, int]:
    prompt, completion = (
        int(record.get("prompt_eval_count") or 0),
        int(record.get("eval_count") or 0),
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def response_body(record: dict[str, Any]) -> dict[str, Any]:
    """The body OpenAI's endpoint would have answered with, from a native result record."""
    token, finish = _token(record["id"]), _FINISH.get(str(record.get("done_reason")), "stop")
    common = {"created": int(record.get("created") or 0), "model": str(record.get("model") or "")}
    text = str(record.get("response") or "")
    if record.get("endpoint") == "completions":
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        return {
            "id": f"cmpl-{token}",
            "object": "text_completion",
            **common,
            "choices": [choice],
            "usage": _usage(record),
        }
    message = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
    return {
        "id": f"chatcmpl-{token}",
        "object": "chat.completion",
        **common,
        "choices": [choice],
        "usage": _usage(record),
    }


def error_code(record: dict[str, Any]) -> str:
    status = record.get("status")
    if record.get("kind") == "input":
        return "invalid_request"
    if isinstance(status, int) and status > 0:
        return f"http_{status}"
    return "request_failed"


def to_openai_line(record: dict[str, Any]) -> dict[str, Any]:
    """One native record (result or error) → one OpenAI batch output line."""
    token = _token(record["id"])
    line: dict[str, Any] = {"id": f"batch_req_{token}", "custom_id": record["id"]}
    if "error" in record:
        error = {"code": error_code(record), "message": str(record["error"])}
        return {**line, "response": None, "error": error}
    response = {"status_code": 200, "request_id": f"req_{token}", "body": response_body(record)}
    return {**line, "response": response, "error": None}
