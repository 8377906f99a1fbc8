"""The official ``openai`` client against both engines (Ollama's OpenAI-compatible API)."""

from __future__ import annotations

import openai
import pytest

from emulator.ollama.launcher import OllamaServer
from tests.ollama.conftest import MODEL, ended_by_limit_or_model


def _client(server: OllamaServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", timeout=120)


def test_chat_completion(server: OllamaServer) -> None:
    completion = _client(server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=5, seed=1
    )
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == MODEL and completion.system_fingerprint == "fp_ollama"
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    usage = completion.usage
    assert usage is not None
    assert ended_by_limit_or_model(choice.finish_reason, usage.completion_tokens, 5)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_completion_streamed(server: OllamaServer) -> None:
    stream = _client(server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=5,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert content and finishes[-1] is not None and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert ended_by_limit_or_model(finishes[-1], chunks[-1].usage.completion_tokens, 5)


def test_completions_streamed_and_not(server: OllamaServer) -> None:
    client = _client(server)
    whole = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=4, seed=2)
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-")
    assert whole.choices[0].text and whole.usage is not None
    assert ended_by_limit_or_model(whole.choices[0].finish_reason, whole.usage.completion_tokens, 4)
    parts = list(
        client.completions.create(
            model=MODEL, prompt="Once upon", max_tokens=4, seed=2, stream=True
        )
    )
    assert "".join(p.choices[0].text for p in parts if p.choices) == whole.choices[0].text


def test_models(server: OllamaServer) -> None:
    client = _client(server)
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.owned_by == "library"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model:1b")
    assert "model 'no-such-model:1b' not found" in str(info.value)


def test_errors(server: OllamaServer) -> None:
    client = _client(server)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(
            model="no-such-model:1b", messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.status_code == 404
    assert missing.value.body == {
        "message": "model 'no-such-model:1b' not found",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.BadRequestError, match="too short"):
        client.chat.completions.create(model=MODEL, messages=[])
