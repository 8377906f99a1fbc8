"""Session-wide Ollama emulator servers for any test folder.

- ``sim_ollama``: sim engine, zero latency, no faults; serves ``gemma2:9b`` and ``smollm2:135m``.
- ``llama_ollama``: llama engine (real CPU inference); serves ``smollm2:135m`` and
  ``gemma2:9b`` (a stand-in: SmolLM2-135M does the work, and the server says so).

Do not change their state (no faults, no /_emulator/reset): start your own server with
``emulator.ollama.launcher.running_ollama_server`` for that.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from emulator.ollama.launcher import OllamaServer, running_ollama_server

SIM_MODELS = ("gemma2:9b", "smollm2:135m")
LLAMA_MODELS = ("smollm2:135m", "gemma2:9b=smollm2:135m")


@pytest.fixture(scope="session")
def sim_ollama() -> Iterator[OllamaServer]:
    with running_ollama_server(engine="sim", models=SIM_MODELS, ready_timeout=60) as server:
        yield server


@pytest.fixture(scope="session")
def llama_ollama() -> Iterator[OllamaServer]:
    with running_ollama_server(engine="llama", models=LLAMA_MODELS, ready_timeout=180) as server:
        yield server
