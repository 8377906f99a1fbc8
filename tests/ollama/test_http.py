"""Raw HTTP: what the clients do not show (content types, NDJSON/SSE framing, field order,
exact error bodies and statuses)."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from emulator.ollama.launcher import OllamaServer
from tests.ollama.conftest import MODEL, SHORT, ended_by_limit_or_model

RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
METRICS = [
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
]


def _http(server: OllamaServer) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=120)


def _lines(response: httpx.Response) -> list[dict[str, object]]:
    body = response.text
    assert body.endswith("\n") and "\n\n" not in body, "NDJSON must have no blank lines"
    return [json.loads(line) for line in body.split("\n")[:-1]]


def test_root_and_version(sim_ollama: OllamaServer) -> None:
    with _http(sim_ollama) as http:
        root = http.get("/")
        assert (root.status_code, root.text) == (200, "Ollama is running")
        assert root.headers["content-type"] == "text/plain; charset=utf-8"
        head = http.head("/")
        assert head.status_code == 200 and head.content == b""
        version = http.get("/api/version")
        assert re.fullmatch(r"\d+\.\d+\.\d+", version.json()["version"])


def test_generate_stream_framing_and_field_order(server: OllamaServer) -> None:
    with _http(server) as http:
        request = {"model": MODEL, "prompt": "Hi", "options": SHORT}
        response = http.post("/api/generate", json=request)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"  # stream defaults to true
    lines = _lines(response)
    for chunk in lines[:-1]:
        assert list(chunk) == ["model", "created_at", "response", "done"]
        assert chunk["done"] is False and RFC3339_NANO.match(str(chunk["created_at"]))
    final = lines[-1]
    assert list(final) == [
        "model", "created_at", "response", "done", "done_reason", "context", *METRICS
    ]  # fmt: skip
    assert final["response"] == "" and final["done"] is True
    assert ended_by_limit_or_model(str(final["done_reason"]), int(str(final["eval_count"])), 6)
    assert all(isinstance(final[key], int) and int(str(final[key])) > 0 for key in METRICS)


def test_chat_stream_and_non_stream(server: OllamaServer) -> None:
    request = {"model": MODEL, "messages": [{"role": "USER", "content": "Hi"}], "options": SHORT}
    with _http(server) as http:
        streamed = http.post("/api/chat", json=request)
        whole = http.post("/api/chat", json={**request, "stream": False})
    lines = _lines(streamed)
    assert list(lines[0]) == ["model", "created_at", "message", "done"]
    assert list(lines[-1]) == ["model", "created_at", "message", "done", "done_reason", *METRICS]
    assert lines[-1]["message"] == {"role": "assistant", "content": ""}
    assert whole.headers["content-type"] == "application/json; charset=utf-8"
    body = whole.json()
    assert list(body) == ["model", "created_at", "message", "done", "done_reason", *METRICS]
    assert body["message"]["content"] == "".join(
        str(line["message"]["content"])  # type: ignore[index]
        for line in lines
    )


def test_openai_sse_framing(sim_ollama: OllamaServer) -> None:
    request = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    with _http(sim_ollama) as http:
        response = http.post("/v1/chat/completions", json=request)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = response.text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/api/generate", b"", 400, "missing request body"),
        ("/api/generate", b"{not json", 400, None),
        ("/api/generate", {"prompt": "x"}, 404, "model '' not found"),
        ("/api/generate", {"model": "bad!", "prompt": "x"}, 404, "model 'bad!' not found"),
        ("/api/chat", {"messages": []}, 400, "model is required"),
        ("/api/chat", {"model": "nope:1b", "messages": []}, 404, "model 'nope:1b' not found"),
        (
            "/api/generate",
            {"model": MODEL, "prompt": "x", "options": {"temperature": "hot"}},
            500,
            'option "temperature" must be of type float32',
        ),
        (
            "/api/generate",
            {"model": MODEL, "prompt": "x", "keep_alive": "10"},
            400,
            'time: missing unit in duration "10"',
        ),
        (
            "/api/generate",
            {"model": MODEL, "prompt": "x", "raw": True, "system": "s"},
            400,
            "raw mode does not support template, system, or context",
        ),
        (
            "/api/generate",
            {"model": MODEL, "prompt": 5},
            400,
            "json: cannot unmarshal number into Go struct field GenerateRequest.prompt"
            " of type string",
        ),
        (
            "/api/generate",
            {"model": MODEL, "prompt": "x", "format": "yaml"},
            500,
            'invalid format: "\\"yaml\\""; expected "json" or a valid JSON Schema object',
        ),
        ("/api/show", {}, 400, "model is required"),
        (
            "/api/chat",
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "tools": [{}]},
            400,
            "registry.ollama.ai/library/gemma2:9b does not support tools",
        ),
    ],
)
def test_error_bodies(
    sim_ollama: OllamaServer, path: str, body: object, status: int, error: str | None
) -> None:
    with _http(sim_ollama) as http:
        if isinstance(body, bytes):
            response = http.post(path, content=body)
        else:
            response = http.post(path, json=body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    payload = response.json()
    assert list(payload) == ["error"]
    if error is not None:
        assert payload["error"] == error


def test_routes_not_found_not_allowed_not_implemented(sim_ollama: OllamaServer) -> None:
    with _http(sim_ollama) as http:
        missing = http.get("/api/nothing")
        assert (missing.status_code, missing.text) == (404, "404 page not found")
        assert missing.headers["content-type"].startswith("text/plain")
        wrong = http.get("/api/generate")
        assert (wrong.status_code, wrong.text) == (405, "405 method not allowed")
        embed = http.post("/api/embed", json={"model": MODEL, "input": "x"})
        assert embed.status_code == 501 and "POST /api/embed" in embed.json()["error"]
        openai_missing = http.post("/v1/completions", json={"model": "nope:1b", "prompt": "x"})
        assert openai_missing.status_code == 404
        assert openai_missing.json()["error"]["type"] == "not_found_error"


def test_load_unload_and_ps(sim_ollama: OllamaServer) -> None:
    model = "smollm2:135m"  # not used by other tests on the shared sim server
    with _http(sim_ollama) as http:
        loaded = http.post("/api/generate", json={"model": model, "keep_alive": -1}).json()
        assert loaded["done_reason"] == "load" and loaded["response"] == ""
        ps = {m["name"]: m for m in http.get("/api/ps").json()["models"]}
        assert int(ps[model]["expires_at"][:4]) > 2200  # forever
        assert RFC3339_NANO.match(ps[model]["expires_at"])
        chat_load = http.post("/api/chat", json={"model": model, "messages": []}).json()
        assert chat_load["done_reason"] == "load"
        assert chat_load["message"] == {"role": "assistant", "content": ""}
        unloaded = http.post("/api/generate", json={"model": model, "keep_alive": 0}).json()
        assert unloaded["done_reason"] == "unload"
        assert model not in [m["name"] for m in http.get("/api/ps").json()["models"]]


def test_tags_shape(sim_ollama: OllamaServer) -> None:
    with _http(sim_ollama) as http:
        models = http.get("/api/tags").json()["models"]
    entry = next(m for m in models if m["name"] == MODEL)
    assert list(entry) == ["name", "model", "modified_at", "size", "digest", "details"]
    assert re.fullmatch(r"[0-9a-f]{64}", entry["digest"])
    assert list(entry["details"]) == [
        "parent_model", "format", "family", "families", "parameter_size", "quantization_level"
    ]  # fmt: skip
