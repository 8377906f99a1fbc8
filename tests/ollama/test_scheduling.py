"""Slots, the load queue and keep-alive, judged by what the server reports (not wall clock)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import httpx
import pytest

from emulator.ollama.errors import BUSY_MESSAGE
from emulator.ollama.launcher import running_ollama_server

MODEL = "gemma2:9b"


async def _generate_all(base_url: str, count: int, **extra: object) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        body = {"model": MODEL, "prompt": "hello", "stream": False, **extra}
        return list(
            await asyncio.gather(*(client.post("/api/generate", json=body) for _ in range(count)))
        )


def _slot_wait(body: dict[str, int]) -> int:
    """Ollama counts slot waits only in total_duration."""
    parts = ("load_duration", "prompt_eval_duration", "eval_duration")
    return body["total_duration"] - sum(body.get(key, 0) for key in parts)


@pytest.mark.parametrize(("parallel", "requests"), [(2, 4), (1, 3)])
def test_requests_beyond_the_slots_wait_their_turn(parallel: int, requests: int) -> None:
    service = 0.5
    env = {"OLLAMA_NUM_PARALLEL": str(parallel)}
    args = ["--sim-service-seconds", str(service)]
    with running_ollama_server(engine="sim", models=[MODEL], env=env, extra_args=args) as server:
        httpx.post(server.base_url + "/api/generate", json={"model": MODEL}, timeout=30)
        responses = asyncio.run(_generate_all(server.base_url, requests))
    bodies = [r.json() for r in responses]
    assert all(r.status_code == 200 for r in responses)
    # Each request held its slot for the service time...
    assert all(b["eval_duration"] >= service * 1e9 for b in bodies)
    # ...and the ones beyond the free slots waited whole rounds for one.
    rounds = sorted(round(_slot_wait(b) / (service * 1e9)) for b in bodies)
    assert rounds == [i // parallel for i in range(requests)]


def test_queue_is_full_only_while_the_model_loads() -> None:
    env = {"OLLAMA_MAX_QUEUE": "1"}
    args = ["--sim-load-seconds", "1.0"]
    with running_ollama_server(engine="sim", models=[MODEL], env=env, extra_args=args) as server:
        during_load = asyncio.run(_generate_all(server.base_url, 3))
        loaded = asyncio.run(_generate_all(server.base_url, 5))
    statuses = sorted(r.status_code for r in during_load)
    assert statuses == [200, 200, 503]
    busy = next(r for r in during_load if r.status_code == 503)
    assert busy.json() == {"error": BUSY_MESSAGE}
    waited = [r.json()["load_duration"] for r in during_load if r.status_code == 200]
    assert all(value >= 1e9 for value in waited)  # queue wait + load count as load_duration
    assert [r.status_code for r in loaded] == [200] * 5  # a loaded model never answers 503


def _expires_in(server_url: str, now_field: str) -> float:
    ps = httpx.get(server_url + "/api/ps").json()["models"]
    assert len(ps) == 1
    expires = datetime.fromisoformat(ps[0]["expires_at"].replace("Z", "+00:00"))
    now = datetime.fromisoformat(now_field[:26] + "+00:00")
    return (expires - now).total_seconds()


def test_keep_alive_from_environment_and_request() -> None:
    env = {"OLLAMA_KEEP_ALIVE": "2m"}
    with running_ollama_server(engine="sim", models=[MODEL], env=env) as server:
        url = server.base_url
        request: dict[str, object] = {"model": MODEL, "prompt": "x", "stream": False}
        body = httpx.post(url + "/api/generate", json=request).json()
        assert 110 < _expires_in(url, body["created_at"]) < 130
        request = {**request, "keep_alive": "1h"}
        body = httpx.post(url + "/api/generate", json=request).json()
        assert 3500 < _expires_in(url, body["created_at"]) < 3700
        request = {"model": MODEL, "prompt": "x", "keep_alive": 0}
        httpx.post(url + "/api/generate", json=request)
        deadline = time.monotonic() + 10
        while httpx.get(url + "/api/ps").json()["models"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(url + "/api/ps").json()["models"] == []


def test_a_different_num_ctx_reloads_the_model(sim_ollama_own: str) -> None:
    url = sim_ollama_own
    httpx.post(url + "/api/generate", json={"model": MODEL, "prompt": "x"})
    assert httpx.get(url + "/api/ps").json()["models"][0]["context_length"] == 4096
    request = {"model": MODEL, "prompt": "x", "options": {"num_ctx": 2048}}
    httpx.post(url + "/api/generate", json=request)
    assert httpx.get(url + "/api/ps").json()["models"][0]["context_length"] == 2048


@pytest.fixture
def sim_ollama_own() -> object:
    with running_ollama_server(engine="sim", models=[MODEL]) as server:
        yield server.base_url


def test_models_from_environment_and_clear_start_up_errors() -> None:
    env = {"OLLAMA_EMULATOR_MODELS": "alpha:1b, beta"}
    with running_ollama_server(engine="sim", models=[], env=env) as server:
        names = [m["name"] for m in httpx.get(server.base_url + "/api/tags").json()["models"]]
        log = server.log_path.read_text() if server.log_path else ""
    assert sorted(names) == ["alpha:1b", "beta:latest"]
    assert "SIM ENGINE" in log and "listening on " + server.base_url in log
    with pytest.raises(RuntimeError, match="no real model 'gemma2:9b'"):
        running_ollama_server(engine="llama", models=["gemma2:9b"]).__enter__()


def test_a_client_that_goes_away_frees_its_slot() -> None:
    # 200 tokens at 20 tokens/s would hold the only slot for ~10 s if generation went on.
    args = ["--sim-tps", "20", "--sim-response-tokens", "200"]
    with running_ollama_server(engine="sim", models=[MODEL], extra_args=args) as server:
        with httpx.Client(base_url=server.base_url, timeout=60) as http:
            http.post("/api/generate", json={"model": MODEL})
            with http.stream("POST", "/api/generate", json={"model": MODEL, "prompt": "x"}) as r:
                lines = r.iter_lines()
                next(lines), next(lines)
        request = {"model": MODEL, "prompt": "y", "stream": False, "options": {"num_predict": 2}}
        body = httpx.post(server.base_url + "/api/generate", json=request, timeout=60).json()
    assert body["done_reason"] == "length"
    assert _slot_wait(body) < 2e9  # far less than the ~10 s the first answer would have taken
