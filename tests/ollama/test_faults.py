"""Seeded fault injection (sim engine): reproducible, and seen by clients as Ollama's faults."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest

from emulator.ollama.errors import BUSY_MESSAGE, RUNNER_STOPPED_MESSAGE
from emulator.ollama.launcher import OllamaServer, running_ollama_server

MODEL = "gemma2:9b"
STALL = 0.3
COUNT = 20
FAULT_ARGS = [
    "--sim-fault-503", "0.15",
    "--sim-fault-500", "0.1",
    "--sim-fault-reset", "0.1",
    "--sim-fault-midstream", "0.1",
    "--sim-fault-stall", "0.1",
    "--sim-stall-seconds", str(STALL),
]  # fmt: skip


def _outcome(http: httpx.Client, index: int) -> str:
    """Classify one streamed generation as the client sees it."""
    body = {"model": MODEL, "prompt": f"prompt {index}", "options": {"num_predict": 8}}
    try:
        with http.stream("POST", "/api/generate", json=body) as response:
            if response.status_code != 200:
                response.read()
                error = response.json()["error"]
                return f"{response.status_code}:{error}"
            lines = [json.loads(line) for line in response.iter_lines()]
    except (httpx.RemoteProtocolError, httpx.ReadError):
        return "reset"
    if "error" in lines[-1]:
        return "midstream:" + lines[-1]["error"]
    stalled = lines[-1]["total_duration"] >= STALL * 1e9
    return "stall" if stalled else "ok"


def _run(server: OllamaServer, count: int) -> list[str]:
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        return [_outcome(http, i) for i in range(count)]


@pytest.fixture(scope="module")
def faulty() -> Iterator[OllamaServer]:
    args = [*FAULT_ARGS, "--sim-seed", "11"]
    with running_ollama_server(engine="sim", models=[MODEL], extra_args=args) as server:
        yield server


def test_same_seed_same_faults(faulty: OllamaServer) -> None:
    first = _run(faulty, COUNT)
    assert {o.split(":")[0] for o in first} == {"ok", "503", "500", "reset", "midstream", "stall"}
    assert f"503:{BUSY_MESSAGE}" in first and f"500:{RUNNER_STOPPED_MESSAGE}" in first
    httpx.post(faulty.base_url + "/_emulator/reset", json={"seed": 11})
    assert _run(faulty, COUNT) == first
    env = {"OLLAMA_SIM_SEED": "11"}  # a fresh process with the same seed, set by environment
    with running_ollama_server(
        engine="sim", models=[MODEL], env=env, extra_args=FAULT_ARGS
    ) as twin:
        assert _run(twin, COUNT) == first
    httpx.post(faulty.base_url + "/_emulator/reset", json={"seed": 12})
    assert _run(faulty, COUNT) != first


def _script(server: OllamaServer, *kinds: str, at_piece: int = 1) -> None:
    response = httpx.post(
        server.base_url + "/_emulator/faults", json={"script": list(kinds), "at_piece": at_piece}
    )
    assert response.status_code == 200


@pytest.fixture(scope="module")
def scripted() -> Iterator[OllamaServer]:
    with running_ollama_server(engine="sim", models=[MODEL]) as server:
        yield server


def test_official_ollama_client_sees_each_fault(scripted: OllamaServer) -> None:
    client = ollama.Client(host=scripted.base_url, timeout=30)
    _script(scripted, "midstream", "503", "500", "reset")
    with pytest.raises(ollama.ResponseError) as midstream:
        list(client.generate(model=MODEL, prompt="x", stream=True))
    assert midstream.value.status_code == -1 and midstream.value.error == RUNNER_STOPPED_MESSAGE
    with pytest.raises(ollama.ResponseError) as busy:
        client.generate(model=MODEL, prompt="x")
    assert busy.value.status_code == 503 and busy.value.error == BUSY_MESSAGE
    with pytest.raises(ollama.ResponseError) as crashed:
        client.chat(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert crashed.value.status_code == 500
    with pytest.raises(httpx.TransportError):
        list(client.generate(model=MODEL, prompt="x", stream=True))
    assert client.generate(model=MODEL, prompt="x").done  # the script is used up


def test_reset_before_any_byte_and_midstream_without_stream(scripted: OllamaServer) -> None:
    client = ollama.Client(host=scripted.base_url, timeout=30)
    _script(scripted, "reset", at_piece=0)
    with pytest.raises(httpx.TransportError):
        client.generate(model=MODEL, prompt="x")
    _script(scripted, "midstream")
    with pytest.raises(ollama.ResponseError) as whole:
        client.generate(model=MODEL, prompt="x")  # nothing written yet: a proper status
    assert whole.value.status_code == 500


def test_openai_client_sees_faults(scripted: OllamaServer) -> None:
    client = openai.OpenAI(base_url=scripted.base_url + "/v1", api_key="x", max_retries=0)
    _script(scripted, "503", "midstream")
    messages: list[dict[str, str]] = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.InternalServerError) as busy:
        client.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    assert busy.value.status_code == 503
    with pytest.raises(openai.APIError, match="unexpectedly stopped"):
        list(client.chat.completions.create(model=MODEL, messages=messages, stream=True))  # type: ignore[arg-type]


def test_bad_fault_script_is_rejected(scripted: OllamaServer) -> None:
    response = httpx.post(scripted.base_url + "/_emulator/faults", json={"script": ["boom"]})
    assert response.status_code == 400 and "unknown fault 'boom'" in response.json()["error"]
