"""Both engines behind one fixture: every conformance test runs against sim and llama."""

from __future__ import annotations

import pytest

from emulator.ollama.launcher import OllamaServer

# Served by both session servers; on llama it is a stand-in (SmolLM2-135M does the work).
MODEL = "gemma2:9b"
# Keep llama generations short: the real model runs on a shared 2-core CPU.
SHORT = {"num_predict": 6, "seed": 1}


def ended_by_limit_or_model(done_reason: str | None, eval_count: int | None, limit: int) -> bool:
    """What an engine guarantees about where a generation ends: at most ``limit`` tokens,
    ``length`` exactly when the limit was reached, ``stop`` when the model ended first.

    Whether a real model samples its end-of-sequence token before the limit depends on the CPU's
    floating-point kernels, so tests accept either end rather than a fixed token count.
    """
    count = eval_count or 0
    if count == limit:
        return done_reason == "length"
    return count < limit and done_reason == "stop"


@pytest.fixture(params=["sim", pytest.param("llama", marks=pytest.mark.llama)])
def server(request: pytest.FixtureRequest) -> OllamaServer:
    engine: str = request.param
    found: OllamaServer = request.getfixturevalue(f"{engine}_ollama")
    return found
