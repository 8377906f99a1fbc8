"""The request engine: adaptive limit, retry classification, back-off — with scripted backends."""

from __future__ import annotations

import asyncio

import httpx
import ollama
import pytest

from tasks.batch.engine import RequestEngine, is_transient
from tasks.batch.lanes import Lane
from tasks.batch.limiter import AdaptiveLimiter, LatencyHistogram
from tasks.batch.records import Completion, PromptRequest


def test_transient_classification() -> None:
    for status in (-1, 429, 500, 502, 503, 504):
        assert is_transient(ollama.ResponseError("x", status))
    for status in (400, 401, 403, 404):
        assert not is_transient(ollama.ResponseError("x", status))
    assert is_transient(ConnectionError("refused"))
    assert is_transient(httpx.ReadTimeout("slow"))
    assert is_transient(httpx.RemoteProtocolError("peer closed connection"))
    assert not is_transient(ValueError("bug"))


def test_limiter_halves_once_per_epoch_and_recovers() -> None:
    async def scenario() -> None:
        limiter = AdaptiveLimiter(8, concurrency=4, max_instances=2)
        epochs = [await limiter.acquire() for _ in range(8)]
        assert limiter.in_flight == 8
        for epoch in epochs[:4]:  # a burst of 429s sent at the old limit counts once
            limiter.release(epoch, "overload")
        assert limiter.limit == 4 and limiter.decreases == 1
        for epoch in epochs[4:]:
            limiter.release(epoch, "ok")
        for _ in range(40):
            limiter.release(await limiter.acquire(), "ok")
        assert limiter.limit == 8  # additive increase back to the maximum

    asyncio.run(scenario())


def test_limiter_never_exceeds_its_limit_and_serves_fifo() -> None:
    async def scenario() -> list[int]:
        limiter = AdaptiveLimiter(2, concurrency=1, max_instances=2)
        order: list[int] = []
        peak = 0

        async def job(i: int) -> None:
            nonlocal peak
            async with limiter.slot() as outcome:
                peak = max(peak, limiter.in_flight)
                order.append(i)
                await asyncio.sleep(0.001)
                outcome[0] = "ok"

        await asyncio.gather(*(job(i) for i in range(20)))
        assert peak == 2 and limiter.in_flight == 0
        return order

    assert asyncio.run(scenario()) == list(range(20))


def test_histogram_quantiles_within_two_percent() -> None:
    histogram = LatencyHistogram()
    for i in range(1, 1001):
        histogram.add(i / 1000)
    for q, expected in ((0.5, 0.5), (0.95, 0.95), (0.99, 0.99)):
        value = histogram.quantile(q)
        assert value is not None and abs(value - expected) / expected < 0.02
    assert LatencyHistogram().quantile(0.5) is None


class ScriptedBackend:
    """Fails each prompt with the scripted exceptions, then answers."""

    def __init__(self, script: dict[str, list[BaseException]]) -> None:
        self.script = script
        self.calls: dict[str, int] = {}

    async def complete(self, request: PromptRequest) -> Completion:
        self.calls[request.id] = self.calls.get(request.id, 0) + 1
        failures = self.script.get(request.id, [])
        if failures:
            raise failures.pop(0)
        return Completion(
            text="ok", model="m", done_reason="stop", prompt_eval_count=2, eval_count=3
        )

    async def aclose(self) -> None:
        return None


def _engine(backend: ScriptedBackend, retries: int = 3) -> RequestEngine:
    return RequestEngine(
        [Lane("only", backend, AdaptiveLimiter(4, concurrency=4, max_instances=1))],
        max_retries=retries,
        backoff_initial_seconds=0.001,
        backoff_max_seconds=0.01,
        attempt_timeout_seconds=5,
    )


def test_engine_retries_transient_and_not_client_errors() -> None:
    backend = ScriptedBackend(
        {
            "flaky": [
                ollama.ResponseError("busy", 503),
                ollama.ResponseError("oops"),
                ConnectionError(),
            ],
            "bad": [ollama.ResponseError("invalid", 400)],
            "gone": [ollama.ResponseError("model 'x' not found", 404)],
            "doomed": [ollama.ResponseError("crash", 500) for _ in range(10)],
        }
    )
    engine = _engine(backend)

    async def run(id_: str):
        return await engine.run(PromptRequest(id_, "f.jsonl", 3, 10, prompt="p"))

    async def all_four():
        return await asyncio.gather(run("flaky"), run("bad"), run("gone"), run("doomed"))

    flaky, bad, gone, doomed = asyncio.run(asyncio.wait_for(all_four(), 30))
    assert flaky.ok and flaky.attempts == 4 and flaky.record["eval_count"] == 3
    assert not bad.ok and backend.calls["bad"] == 1 and bad.record["status"] == 400
    assert not gone.ok and backend.calls["gone"] == 1 and "not found" in gone.record["error"]
    assert not doomed.ok and backend.calls["doomed"] == 4 and doomed.record["status"] == 500
    assert doomed.record["line"] == 3 and doomed.record["file"] == "f.jsonl"
    assert engine.stats.succeeded == 1 and engine.stats.failed == 3


def test_error_records_never_carry_tokens() -> None:
    secret = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl"
    backend = ScriptedBackend({"x": [ollama.ResponseError(f"rejected Bearer {secret}", 401)]})
    outcome = asyncio.run(_engine(backend).run(PromptRequest("x", "f", 1, 1, prompt="p")))
    assert secret not in str(outcome.record) and "[REDACTED]" in outcome.record["error"]


@pytest.mark.parametrize("retries", [0, 2])
def test_retry_limit_is_respected(retries: int) -> None:
    backend = ScriptedBackend({"x": [httpx.ReadTimeout("t") for _ in range(10)]})
    outcome = asyncio.run(_engine(backend, retries).run(PromptRequest("x", "f", 1, 1, prompt="p")))
    assert not outcome.ok and backend.calls["x"] == retries + 1
