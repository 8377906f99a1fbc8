"""Settings of the server: Ollama's environment variables plus the sim engine's knobs.

Durations follow Ollama: a Go duration string (``"5m"``, ``"1h30m"``, ``"-1m"``) or a number of
seconds; any negative value means "forever" (``math.inf`` here).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

FOREVER = math.inf

_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5
    "μs": 1e-6,  # U+03BC
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Parse a Go ``time.ParseDuration`` string into seconds; raise ValueError with Go's text."""
    quoted = '"' + text + '"'
    rest = text
    sign = 1.0
    if rest[:1] in "+-" and rest:
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f"time: invalid duration {quoted}")
    total = 0.0
    pos = 0
    while pos < len(rest):
        match = _GO_PART.match(rest, pos)
        if match is None:
            if re.match(r"(\d+(?:\.\d*)?|\.\d+)$", rest[pos:]):
                raise ValueError(f"time: missing unit in duration {quoted}")
            number = re.match(r"(\d+(?:\.\d*)?|\.\d+)", rest[pos:])
            if number is not None:
                unit = re.match(r"[^\d.]+", rest[pos + number.end() :])
                unit_text = unit.group(0) if unit else ""
                raise ValueError(f'time: unknown unit "{unit_text}" in duration {quoted}')
            raise ValueError(f"time: invalid duration {quoted}")
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    return sign * total


def keep_alive_from_json(value: object) -> float | None:
    """A request's ``keep_alive`` (number of seconds or Go duration) → seconds; None if unset.

    Raises ValueError (→ 400) for an unparsable value, as Ollama's JSON binding does.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("json: cannot unmarshal bool into Go value of type api.Duration")
    if isinstance(value, int | float):
        return FOREVER if value < 0 else float(value)
    if isinstance(value, str):
        seconds = parse_go_duration(value)
        return FOREVER if seconds < 0 else seconds
    raise ValueError(f"Unsupported type: '{type(value).__name__}'")


def keep_alive_from_env(value: str | None) -> float:
    """``OLLAMA_KEEP_ALIVE``: Go duration, else integer seconds, else the default 5m."""
    default = 300.0
    if value is None or value.strip() == "":
        return default
    try:
        seconds = parse_go_duration(value.strip())
    except ValueError:
        try:
            seconds = float(int(value.strip()))
        except ValueError:
            return default
    return FOREVER if seconds < 0 else seconds


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc
    return value


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


@dataclass(frozen=True)
class FaultRates:
    """Probabilities (0..1) that a generation request meets each fault; drawn in arrival order."""

    busy_503: float = 0.0
    error_500: float = 0.0
    reset: float = 0.0
    midstream: float = 0.0
    stall: float = 0.0

    def total(self) -> float:
        return self.busy_503 + self.error_500 + self.reset + self.midstream + self.stall


@dataclass(frozen=True)
class SimConfig:
    """The sim engine: deterministic text, a latency model and seeded fault injection."""

    seed: int = 0
    load_seconds: float = 0.0
    prompt_tps: float = 0.0  # prompt-eval tokens/s; 0 = instant
    tps: float = 0.0  # generated tokens/s per slot; 0 = instant
    service_seconds: float = 0.0  # fixed time every request holds its slot
    min_tokens: int = 12
    max_tokens: int = 48
    faults: FaultRates = field(default_factory=FaultRates)
    stall_seconds: float = 10.0

    def validate(self) -> None:
        for name in ("load_seconds", "prompt_tps", "tps", "service_seconds", "stall_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"sim {name} must be >= 0")
        if not 1 <= self.min_tokens <= self.max_tokens:
            raise ValueError("sim response tokens need 1 <= min <= max")
        for name in ("busy_503", "error_500", "reset", "midstream", "stall"):
            rate = getattr(self.faults, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"sim fault rate {name} must be within 0..1, got {rate}")
        if self.faults.total() > 1.0:
            raise ValueError("sim fault rates must add up to at most 1")


# Environment variable → SimConfig field (documented in --help).
SIM_ENV: dict[str, str] = {
    "OLLAMA_SIM_SEED": "seed for text and faults (int, default 0)",
    "OLLAMA_SIM_LOAD_SECONDS": "model load time in seconds (default 0)",
    "OLLAMA_SIM_PROMPT_TPS": "prompt-eval tokens/s, 0 = instant (default 0)",
    "OLLAMA_SIM_TPS": "generated tokens/s per slot, 0 = instant (default 0)",
    "OLLAMA_SIM_SERVICE_SECONDS": "fixed extra seconds each request holds its slot (default 0)",
    "OLLAMA_SIM_RESPONSE_TOKENS": "natural answer length, N or MIN-MAX tokens (default 12-48)",
    "OLLAMA_SIM_FAULT_503": "rate of 503 server busy before any work (0..1)",
    "OLLAMA_SIM_FAULT_500": "rate of 500 runner crash before the first token (0..1)",
    "OLLAMA_SIM_FAULT_RESET": "rate of TCP connection resets (0..1)",
    "OLLAMA_SIM_FAULT_MIDSTREAM": 'rate of {"error":...} lines mid-stream (0..1)',
    "OLLAMA_SIM_FAULT_STALL": "rate of stalls (0..1)",
    "OLLAMA_SIM_STALL_SECONDS": "how long a stall stops sending (default 10)",
}


def parse_token_range(text: str) -> tuple[int, int]:
    parts = text.split("-")
    try:
        if len(parts) == 1:
            return int(parts[0]), int(parts[0])
        if len(parts) == 2:
            return int(parts[0]), int(parts[1])
    except ValueError:
        pass
    raise ValueError(f"response tokens must be N or MIN-MAX, got {text!r}")


def sim_config_from_env(env: Mapping[str, str]) -> SimConfig:
    low, high = parse_token_range(env.get("OLLAMA_SIM_RESPONSE_TOKENS", "").strip() or "12-48")
    config = SimConfig(
        seed=_env_int(env, "OLLAMA_SIM_SEED", 0),
        load_seconds=_env_float(env, "OLLAMA_SIM_LOAD_SECONDS", 0.0),
        prompt_tps=_env_float(env, "OLLAMA_SIM_PROMPT_TPS", 0.0),
        tps=_env_float(env, "OLLAMA_SIM_TPS", 0.0),
        service_seconds=_env_float(env, "OLLAMA_SIM_SERVICE_SECONDS", 0.0),
        min_tokens=low,
        max_tokens=high,
        faults=FaultRates(
            busy_503=_env_float(env, "OLLAMA_SIM_FAULT_503", 0.0),
            error_500=_env_float(env, "OLLAMA_SIM_FAULT_500", 0.0),
            reset=_env_float(env, "OLLAMA_SIM_FAULT_RESET", 0.0),
            midstream=_env_float(env, "OLLAMA_SIM_FAULT_MIDSTREAM", 0.0),
            stall=_env_float(env, "OLLAMA_SIM_FAULT_STALL", 0.0),
        ),
        stall_seconds=_env_float(env, "OLLAMA_SIM_STALL_SECONDS", 10.0),
    )
    config.validate()
    return config


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server needs; built once by the CLI from flags and environment."""

    engine: str  # "sim" | "llama"
    models: tuple[str, ...]  # model SPECs: NAME or NAME=STANDIN
    num_parallel: int = 1
    max_queue: int = 512
    keep_alive: float = 300.0  # seconds; FOREVER for never
    max_loaded_models: int = 3
    context_length: int = 4096
    num_threads: int = 0  # llama: threads per context, 0 = cores / slots
    preload: bool = False
    sim: SimConfig = field(default_factory=SimConfig)


def server_env_settings(env: Mapping[str, str]) -> dict[str, object]:
    """Ollama's own variables, with its defaults."""
    num_parallel = _env_int(env, "OLLAMA_NUM_PARALLEL", 1)
    if num_parallel <= 0:  # Ollama ≥ 0.12 treats 0 / unset as 1
        num_parallel = 1
    max_queue = _env_int(env, "OLLAMA_MAX_QUEUE", 512)
    if max_queue <= 0:
        max_queue = 512
    max_loaded = _env_int(env, "OLLAMA_MAX_LOADED_MODELS", 0)
    context_length = _env_int(env, "OLLAMA_CONTEXT_LENGTH", 0)
    return {
        "num_parallel": num_parallel,
        "max_queue": max_queue,
        "keep_alive": keep_alive_from_env(env.get("OLLAMA_KEEP_ALIVE")),
        "max_loaded_models": max_loaded if max_loaded > 0 else 3,
        "context_length": context_length if context_length > 0 else 4096,
    }


def models_from_env(env: Mapping[str, str] | None = None) -> list[str]:
    raw = (env if env is not None else os.environ).get("OLLAMA_EMULATOR_MODELS", "")
    return [part.strip() for part in raw.split(",") if part.strip()]
