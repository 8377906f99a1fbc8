"""What an engine is: load a model into slots, run one generation per slot, describe a model.

HTTP knows nothing of engines beyond this module; engines know nothing of HTTP.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from emulator.ollama.catalog import ModelEntry
from emulator.ollama.errors import OllamaError
from emulator.ollama.options import GenOptions


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Job:
    """One generation: chat messages (templated by the model) or a raw prompt."""

    messages: tuple[Message, ...] | None
    prompt: str  # used when messages is None (raw generate)
    options: GenOptions
    format: str | dict[str, Any] | None = None
    context: tuple[int, ...] = ()
    stream: bool = True  # False: the caller only wants the whole text (engines may batch)


@dataclass(frozen=True)
class Piece:
    text: str


@dataclass(frozen=True)
class Done:
    done_reason: str  # "stop" | "length"
    prompt_eval_count: int
    prompt_eval_duration: int  # ns
    eval_count: int
    eval_duration: int  # ns
    context: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelFacts:
    """What ``/api/show``, ``/api/tags`` and ``/api/ps`` say about a served name."""

    format: str
    family: str
    parameter_size: str
    quantization_level: str
    parent_model: str
    size: int
    context_length: int
    template: str
    system: str
    parameters: str
    modelfile: str
    model_info: dict[str, Any]
    capabilities: list[str] = field(default_factory=lambda: ["completion"])
    license: str = ""

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": self.parent_model,
            "format": self.format,
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


class LoadedModel(Protocol):
    """A model in memory with ``num_parallel`` independent slots."""

    context_length: int
    size: int

    def generate(self, slot: int, job: Job) -> AsyncIterator[Piece | Done]:
        """Yield text pieces, then exactly one Done. Raise OllamaError on failure."""
        ...

    async def close(self) -> None: ...


class Engine(Protocol):
    name: str

    async def load(self, entry: ModelEntry, num_ctx: int, num_parallel: int) -> LoadedModel: ...

    async def facts(self, entry: ModelEntry) -> ModelFacts: ...


class StopMatcher:
    """Cut the output at the first stop string; hold back text that may start one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._buffer = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, whether a stop string was hit)."""
        if not self._stops:
            return text, False
        self._buffer += text
        first = -1
        for stop in self._stops:
            index = self._buffer.find(stop)
            if index != -1 and (first == -1 or index < first):
                first = index
        if first != -1:
            out = self._buffer[:first]
            self._buffer = ""
            return out, True
        hold = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._buffer)), 0, -1):
                if self._buffer.endswith(stop[:size]):
                    hold = max(hold, size)
                    break
        out = self._buffer[: len(self._buffer) - hold]
        self._buffer = self._buffer[len(self._buffer) - hold :]
        return out, False

    def flush(self) -> str:
        out, self._buffer = self._buffer, ""
        return out


def check_format(value: object) -> str | dict[str, Any] | None:
    """``format``: ``"json"`` or a JSON Schema object; null/"" mean unset; else Ollama's 500."""
    if value is None or value == "":
        return None
    if value == "json":
        return "json"
    if isinstance(value, dict):
        return value
    quoted = json.dumps(json.dumps(value))  # Go's %q of the raw JSON
    raise OllamaError(
        500, f'invalid format: {quoted}; expected "json" or a valid JSON Schema object'
    )
