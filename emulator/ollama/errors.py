"""The one error type of the server, rendered as Ollama renders it: ``{"error": "..."}``."""

from __future__ import annotations

BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
RUNNER_STOPPED_MESSAGE = (
    "model runner has unexpectedly stopped, this may be due to resource limitations or an "
    "internal error, check ollama server logs for details"
)


class OllamaError(Exception):
    """An error with the HTTP status Ollama answers with and its exact message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"OllamaError({self.status}, {self.message!r})"


def model_not_found(name: str) -> OllamaError:
    return OllamaError(404, f"model '{name}' not found")
