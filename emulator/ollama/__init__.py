"""An Ollama-compatible HTTP server: engine ``llama`` (real CPU inference with llama-cpp-python
on a small gguf from PyPI) or ``sim`` (deterministic text, latency model, fault injection).

Public surface: ``python -m emulator.ollama`` and the launcher below (imported lazily, so the
server process itself does not pay for httpx).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emulator.ollama.launcher import (
        OllamaServer,
        running_ollama_server,
        start_ollama_server,
        stop_ollama_server,
    )

__all__ = ["OllamaServer", "running_ollama_server", "start_ollama_server", "stop_ollama_server"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from emulator.ollama import launcher

        return getattr(launcher, name)
    raise AttributeError(f"module 'emulator.ollama' has no attribute {name!r}")
