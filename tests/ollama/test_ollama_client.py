"""The official ``ollama`` client against both engines: it must not tell us from Ollama."""

from __future__ import annotations

import asyncio

import ollama
import pytest

from emulator.ollama.launcher import OllamaServer, running_ollama_server
from tests.ollama.conftest import MODEL, SHORT, ended_by_limit_or_model


def _client(server: OllamaServer) -> ollama.Client:
    return ollama.Client(host=server.base_url, timeout=120)


def test_generate_not_streamed(server: OllamaServer) -> None:
    response = _client(server).generate(model=MODEL, prompt="Why is the sky blue?", options=SHORT)
    assert response.done and ended_by_limit_or_model(response.done_reason, response.eval_count, 6)
    assert response.model == MODEL
    assert response.response.strip()
    assert (response.prompt_eval_count or 0) > 0
    assert (response.total_duration or 0) >= (response.eval_duration or 0) > 0
    assert response.context


def test_generate_streamed(server: OllamaServer) -> None:
    parts = list(
        _client(server).generate(model=MODEL, prompt="Say hello.", options=SHORT, stream=True)
    )
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert ended_by_limit_or_model(parts[-1].done_reason, parts[-1].eval_count, 6)
    assert "".join(p.response for p in parts).strip()


def test_chat_streamed_and_not(server: OllamaServer) -> None:
    client = _client(server)
    messages = [{"role": "user", "content": "Name a colour."}]
    whole = client.chat(model=MODEL, messages=messages, options=SHORT)
    assert whole.message.role == "assistant" and whole.message.content
    assert ended_by_limit_or_model(whole.done_reason, whole.eval_count, 6)
    parts = list(client.chat(model=MODEL, messages=messages, options=SHORT, stream=True))
    assert parts[-1].done and parts[-1].message.content == ""
    # Same seed, same prompt: the streamed text is the non-streamed text.
    assert "".join(p.message.content for p in parts) == whole.message.content


def test_same_seed_same_text_with_a_warm_cache(server: OllamaServer) -> None:
    """The slot has just run another prompt, then this one: the text of a seed still does not
    change, streamed or not (the engine re-evaluates the whole prompt; a cached prefix would
    leave a shorter evaluation whose numerics differ on some CPUs)."""
    client = _client(server)
    client.chat(
        model=MODEL, messages=[{"role": "user", "content": "Count to three."}], options=SHORT
    )
    messages = [{"role": "user", "content": "Name a fruit."}]
    whole = client.chat(model=MODEL, messages=messages, options=SHORT)
    parts = list(client.chat(model=MODEL, messages=messages, options=SHORT, stream=True))
    again = client.chat(model=MODEL, messages=messages, options=SHORT)
    streamed = "".join(p.message.content for p in parts)
    assert streamed == whole.message.content == again.message.content
    assert parts[-1].eval_count == whole.eval_count == again.eval_count
    client.generate(model=MODEL, prompt="Count to three.", options=SHORT)
    generated = client.generate(model=MODEL, prompt="Name a fruit.", options=SHORT)
    pieces = client.generate(model=MODEL, prompt="Name a fruit.", options=SHORT, stream=True)
    assert "".join(p.response for p in pieces) == generated.response


def test_stop_string_and_natural_stop(sim_ollama: OllamaServer) -> None:
    client = _client(sim_ollama)
    full = client.generate(model=MODEL, prompt="Tell me more.", options={"seed": 3})
    assert full.done_reason == "stop"  # the sim answer ends on its own
    word = full.response.split()[2]
    cut = client.generate(model=MODEL, prompt="Tell me more.", options={"seed": 3, "stop": [word]})
    assert cut.done_reason == "stop"
    assert cut.response == full.response[: full.response.index(word)]


def test_async_client(server: OllamaServer) -> None:
    async def run() -> tuple[str, str]:
        client = ollama.AsyncClient(host=server.base_url, timeout=120)
        whole = await client.generate(model=MODEL, prompt="Hi", options=SHORT)
        streamed = []
        async for part in await client.chat(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], options=SHORT, stream=True
        ):
            streamed.append(part.message.content)
        return whole.response, "".join(streamed)

    generated, chatted = asyncio.run(run())
    assert generated.strip() and chatted.strip()


def test_list_show_ps_pull(server: OllamaServer) -> None:
    client = _client(server)
    names = [m.model for m in client.list().models]
    assert MODEL in names and "smollm2:135m" in names
    shown = client.show(MODEL)
    assert shown.modelinfo is not None and shown.details is not None
    client.generate(model=MODEL, prompt="", keep_alive="10m")  # load it
    loaded = {m.model: m for m in client.ps().models}
    assert MODEL in loaded and loaded[MODEL].expires_at is not None
    statuses = [p.status for p in client.pull(MODEL, stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert client.pull(MODEL).status == "success"


@pytest.mark.llama
def test_show_says_which_real_model_serves_the_name(llama_ollama: OllamaServer) -> None:
    shown = _client(llama_ollama).show(MODEL)
    assert shown.details is not None and shown.details.parent_model == "smollm2:135m"
    assert shown.details.family == "llama" and shown.details.format == "gguf"
    assert "STAND-IN" in (shown.modelfile or "") and "SmolLM2" in (shown.modelfile or "")
    assert shown.modelinfo is not None
    assert shown.modelinfo["emulator.real_model"] == "smollm2:135m"
    assert shown.modelinfo["emulator.served_as"] == MODEL
    listed = {m.model: m for m in _client(llama_ollama).list().models}
    assert listed[MODEL].details is not None
    assert listed[MODEL].details.parent_model == "smollm2:135m"
    assert listed[MODEL].size == listed["smollm2:135m"].size > 10_000_000


def test_sim_says_it_is_synthetic(sim_ollama: OllamaServer) -> None:
    shown = _client(sim_ollama).show(MODEL)
    assert shown.details is not None and shown.details.format == "sim"
    assert "SIM engine" in (shown.modelfile or "")


def test_unknown_model_is_404(server: OllamaServer) -> None:
    client = _client(server)
    for call in (
        lambda: client.generate(model="no-such-model:1b", prompt="x"),
        lambda: client.chat(model="no-such-model:1b", messages=[{"role": "user", "content": "x"}]),
        lambda: client.show("no-such-model:1b"),
    ):
        with pytest.raises(ollama.ResponseError) as info:
            call()
        assert info.value.status_code == 404
        assert info.value.error == "model 'no-such-model:1b' not found"


def test_pull_of_a_model_the_engine_lacks_fails(server: OllamaServer) -> None:
    client = _client(server)
    with pytest.raises(ollama.ResponseError) as streamed:
        list(client.pull("no-such-model:1b", stream=True))
    assert streamed.value.status_code == -1
    assert streamed.value.error == "pull model manifest: file does not exist"
    with pytest.raises(ollama.ResponseError) as whole:
        client.pull("no-such-model:1b")
    assert whole.value.status_code == 500


@pytest.mark.llama
def test_llama_pull_installs_a_real_model_it_ships() -> None:
    with running_ollama_server(engine="llama", models=["smollm2:135m"]) as own:
        client = _client(own)
        assert [m.model for m in client.list().models] == ["smollm2:135m"]
        assert client.pull("gemma3:270m").status == "success"
        assert "gemma3:270m" in [m.model for m in client.list().models]
        shown = client.show("gemma3:270m")
        assert shown.details is not None and shown.details.family == "gemma3"
        assert shown.details.parent_model == "gemma3:270m"
        assert shown.license == "gemma"
        assert "no chat template" in (shown.modelfile or "")  # a base model: said, not hidden
        answer = client.chat(
            model="gemma3:270m",
            messages=[{"role": "user", "content": "2+2="}],
            options={"num_predict": 3, "temperature": 0},
        )
        assert ended_by_limit_or_model(answer.done_reason, answer.eval_count, 3)
