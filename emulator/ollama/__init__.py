"""An Ollama-compatible HTTP server: engine ``llama`` (real CPU inference with llama-cpp-python
on a small gguf from PyPI) or ``sim`` (deterministic text, latency model, fault injection).

Public surface: ``python -m emulator.ollama`` and the launcher below.
"""

from emulator.ollama.launcher import (
    OllamaServer,
    running_ollama_server,
    start_ollama_server,
    stop_ollama_server,
)

__all__ = ["OllamaServer", "running_ollama_server", "start_ollama_server", "stop_ollama_server"]
