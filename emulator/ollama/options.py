"""Ollama's request ``options`` (names, types and defaults of ``api.DefaultOptions``).

Type errors read as Ollama's ``Options.FromMap`` writes them and surface as 500, as Ollama's
``handleScheduleError`` does; unknown keys are ignored (Ollama logs ``invalid option provided``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

from emulator.ollama.errors import OllamaError

log = logging.getLogger("emulator.ollama")

_INT = {
    "num_keep",
    "seed",
    "num_predict",
    "top_k",
    "repeat_last_n",
    "mirostat",
    "num_ctx",
    "num_batch",
    "num_gpu",
    "main_gpu",
    "num_thread",
    "draft_num_predict",
}
_FLOAT = {
    "top_p",
    "min_p",
    "typical_p",
    "temperature",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "tfs_z",
    "mirostat_tau",
    "mirostat_eta",
}
_BOOL = {
    "numa",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mmap",
    "use_mlock",
    "embedding_only",
    "penalize_newline",
}
_STR_LIST = {"stop"}


@dataclass(frozen=True)
class GenOptions:
    """The options the engines honour, with Ollama's defaults (not llama.cpp's)."""

    num_predict: int = -1
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    seed: int = -1
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    num_ctx: int | None = None  # None: the server default (OLLAMA_CONTEXT_LENGTH or 4096)
    num_batch: int = 512
    num_thread: int = 0


def _check(key: str, value: object) -> object:
    if key in _INT:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise OllamaError(500, f'option "{key}" must be of type integer')
        return int(value)
    if key in _FLOAT:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise OllamaError(500, f'option "{key}" must be of type float32')
        return float(value)
    if key in _BOOL:
        if not isinstance(value, bool):
            raise OllamaError(500, f'option "{key}" must be of type boolean')
        return value
    if key in _STR_LIST:
        if isinstance(value, str):  # Ollama accepts only a list; a bare string is a type error
            raise OllamaError(500, f'option "{key}" must be of type array')
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise OllamaError(500, f'option "{key}" must be of type array')
        return tuple(value)
    return value


def parse_options(raw: object, base: GenOptions | None = None) -> GenOptions:
    """Validate a request's ``options`` object and merge it over ``base`` (default: Ollama's)."""
    options = base or GenOptions()
    if raw is None:
        return options
    if not isinstance(raw, Mapping):
        raise OllamaError(
            400, "json: cannot unmarshal into Go struct field of type map[string]interface {}"
        )
    updates: dict[str, object] = {}
    fields = GenOptions.__dataclass_fields__
    for key, value in raw.items():
        if value is None:
            continue
        if key not in _INT | _FLOAT | _BOOL | _STR_LIST:
            log.warning("invalid option provided: %s", key)
            continue
        checked = _check(key, value)
        if key in fields:
            updates[key] = checked
    options = replace(options, **updates)  # type: ignore[arg-type]
    if options.num_ctx is not None and options.num_ctx < 1:
        options = replace(options, num_ctx=None)
    return options
