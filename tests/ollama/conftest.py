"""Both engines behind one fixture: every conformance test runs against sim and llama."""

from __future__ import annotations

import pytest

from emulator.ollama.launcher import OllamaServer

# Served by both session servers; on llama it is a stand-in (SmolLM2-135M does the work).
MODEL = "gemma2:9b"
# Keep llama generations short: the real model runs on a shared 2-core CPU.
SHORT = {"num_predict": 6, "seed": 1}


@pytest.fixture(params=["sim", pytest.param("llama", marks=pytest.mark.llama)])
def server(request: pytest.FixtureRequest) -> OllamaServer:
    engine: str = request.param
    found: OllamaServer = request.getfixturevalue(f"{engine}_ollama")
    return found
