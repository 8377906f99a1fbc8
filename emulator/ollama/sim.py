"""The sim engine: deterministic text, a latency model and seeded fault injection.

Text is a function of (sim seed, model name, rendered prompt, ``seed`` option): the same request
always gets the same answer. A "token" is a word or a punctuation mark (regex
``\\w+|[^\\w\\s]``), so ``eval_count`` equals the number of tokens in the text it produced
(before a stop string cut it) and ``prompt_eval_count`` the tokens of the rendered prompt.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from emulator.ollama.catalog import ModelEntry
from emulator.ollama.config import SimConfig
from emulator.ollama.engine import Done, Job, LoadedModel, ModelFacts, Piece, StopMatcher

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_PIECE_RE = re.compile(r"\s*(?:\w+|[^\w\s])")

_WORD_TEXT = (
    "the model answers with light and air while every small cloud moves over blue water "
    "because sunlight scatters across short waves in the sky so people see color near "
    "evening when long red rays pass through more layers of gas dust and warm wind data "
    "flows from one system into another service that runs on many quiet machines each "
    "request waits for a free slot then returns plain text tokens quickly under steady load "
    "batch jobs read prompts from storage write results back and count every token twice "
    "simple tests check clear errors good design keeps parts small typed honest and easy "
    "to change later teams ship reliable tools that people trust"
)
WORDS = tuple(_WORD_TEXT.split(" "))


def count_tokens(text: str) -> int:
    return len(TOKEN_RE.findall(text))


def render_prompt(job: Job) -> str:
    """The sim's chat template: one ``role: content`` line per message, then ``assistant:``."""
    if job.messages is None:
        return job.prompt
    lines = [f"{m.role}: {m.content}" for m in job.messages]
    return "\n".join([*lines, "assistant:"])


def _rng_for(*parts: object) -> random.Random:
    digest = hashlib.blake2b("\x00".join(map(str, parts)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def _sentence(rng: random.Random) -> list[str]:
    words = [rng.choice(WORDS) for _ in range(rng.randint(4, 12))]
    words[0] = words[0].capitalize()
    return words


def _plain_pieces(rng: random.Random, target: int) -> list[str]:
    pieces: list[str] = []
    while len(pieces) < target:
        for word in _sentence(rng):
            pieces.append(word if not pieces else " " + word)
        pieces.append(".")
    return pieces


def _fill_schema(schema: Any, rng: random.Random, depth: int = 0) -> Any:
    if not isinstance(schema, dict):
        return " ".join(_sentence(rng)[:3])
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        props = schema.get("properties") or {}
        if depth > 4 or not isinstance(props, dict):
            return {}
        return {key: _fill_schema(sub, rng, depth + 1) for key, sub in props.items()}
    if kind == "array":
        low = int(schema.get("minItems", 1))
        count = max(low, min(int(schema.get("maxItems", 3)), rng.randint(1, 3)))
        return [_fill_schema(schema.get("items", {}), rng, depth + 1) for _ in range(count)]
    if kind == "integer":
        return rng.randint(0, 100)
    if kind == "number":
        return round(rng.uniform(0, 100), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return " ".join(_sentence(rng)[: rng.randint(2, 6)])


def sim_pieces(job: Job, rendered: str, model: str, config: SimConfig) -> list[str]:
    """The whole natural answer as token pieces (joined, they are the text)."""
    rng = _rng_for(config.seed, model, job.options.seed, job.format, rendered)
    target = rng.randint(config.min_tokens, config.max_tokens)
    if job.format is None:
        return _plain_pieces(rng, target)
    if job.format == "json":
        value: Any = {"response": " ".join(_sentence(rng))}
    else:
        value = _fill_schema(job.format, rng)
    return _PIECE_RE.findall(json.dumps(value, ensure_ascii=False))


def cut_output(pieces: list[str], limit: int, stops: tuple[str, ...]) -> tuple[list[str], str]:
    """Apply num_predict and stop strings: the text released after each generated token (may be
    empty while a possible stop string is held back) and the done reason."""
    matcher = StopMatcher(stops)
    texts: list[str] = []
    for index, piece in enumerate(pieces):
        if index >= limit:
            reason = "length"
            break
        text, stopped = matcher.feed(piece)
        texts.append(text)
        if stopped:
            return texts, "stop"
    else:
        reason = "stop"
    tail = matcher.flush()
    if tail:
        texts[-1] += tail
    return texts, reason


def _context_ids(text: str) -> tuple[int, ...]:
    """Stable token ids for the sim's ``context`` (it has no real vocabulary)."""
    return tuple(zlib.crc32(t.encode()) & 0x7FFF for t in TOKEN_RE.findall(text))


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


class SimModel:
    """A "loaded" sim model: slots are independent; each runs at ``tps`` tokens/s."""

    def __init__(self, entry: ModelEntry, num_ctx: int, config: SimConfig) -> None:
        self.entry = entry
        self.context_length = num_ctx
        self.size = 0
        self._config = config

    async def generate(self, slot: int, job: Job) -> AsyncIterator[Piece | Done]:
        config = self._config
        rendered = render_prompt(job)
        prompt_tokens = count_tokens(rendered) + len(job.context)
        start = time.perf_counter_ns()
        if config.prompt_tps > 0:
            await asyncio.sleep(prompt_tokens / config.prompt_tps)
        prompt_done = time.perf_counter_ns()
        pieces = sim_pieces(job, rendered, self.entry.display, config)
        num_ctx = job.options.num_ctx or self.context_length
        limit = max(1, num_ctx - prompt_tokens)
        if job.options.num_predict >= 0:
            limit = min(limit, job.options.num_predict)
        if config.service_seconds > 0:
            await asyncio.sleep(config.service_seconds)
        texts, reason = cut_output(pieces, limit, job.options.stop)
        gen_start = time.perf_counter()
        if job.stream:
            for index, text in enumerate(texts):
                if config.tps > 0:
                    await _sleep_until(gen_start + (index + 1) / config.tps)
                if text:
                    yield Piece(text)
        else:  # nobody sees the tokens one by one: one piece, same pacing, far less overhead
            if config.tps > 0:
                await _sleep_until(gen_start + len(texts) / config.tps)
            if any(texts):
                yield Piece("".join(texts))
        end = time.perf_counter_ns()
        produced = "".join(pieces[: len(texts)])
        yield Done(
            done_reason=reason,
            prompt_eval_count=prompt_tokens,
            prompt_eval_duration=prompt_done - start,
            eval_count=len(texts),
            eval_duration=end - prompt_done,
            context=job.context + _context_ids(rendered + produced),
        )

    async def close(self) -> None:
        return None


class SimEngine:
    name = "sim"

    def __init__(self, config: SimConfig) -> None:
        self.config = config

    async def load(self, entry: ModelEntry, num_ctx: int, num_parallel: int) -> LoadedModel:
        if self.config.load_seconds > 0:
            await asyncio.sleep(self.config.load_seconds)
        return SimModel(entry, num_ctx, self.config)

    async def facts(self, entry: ModelEntry) -> ModelFacts:
        note = (
            f"# {entry.display} is served by the ollama-cloudrun emulator's SIM engine:\n"
            "# deterministic synthetic text and a latency model, no real model weights.\n"
        )
        return ModelFacts(
            format="sim",
            family="sim",
            parameter_size="",
            quantization_level="",
            parent_model="",
            size=0,
            context_length=0,
            template="{{ range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}assistant:",
            system="",
            parameters="",
            modelfile=note + f"FROM {entry.display}\n",
            model_info={
                "general.architecture": "sim",
                "emulator.engine": "sim",
                "emulator.real_model": None,
                "emulator.note": "synthetic text from the sim engine; not a real model",
            },
        )


# ---------------------------------------------------------------------------------------------
# Fault injection

FAULT_KINDS = ("503", "500", "reset", "midstream", "stall")


@dataclass(frozen=True)
class Fault:
    kind: str  # one of FAULT_KINDS
    at_piece: int  # reset/stall/midstream happen after this many pieces were sent


class FaultInjector:
    """Draws one outcome per generation request, in arrival order, from a seeded generator.

    The same seed and the same sequence of requests give the same faults. Tests can also queue
    outcomes explicitly (``script``), which are used before any random draw.
    """

    def __init__(self, config: SimConfig) -> None:
        self._config = config
        self._rng = random.Random(config.seed ^ 0x5EED)
        self._script: deque[Fault | None] = deque()
        self.drawn = 0

    @property
    def active(self) -> bool:
        return bool(self._script) or self._config.faults.total() > 0

    def reset(self, seed: int | None = None) -> None:
        self._rng = random.Random((self._config.seed if seed is None else seed) ^ 0x5EED)
        self._script.clear()
        self.drawn = 0

    def script(self, kinds: list[str], at_piece: int = 1) -> None:
        for kind in kinds:
            if kind not in (*FAULT_KINDS, "none"):
                raise ValueError(f"unknown fault {kind!r}; one of {', '.join(FAULT_KINDS)}, none")
            self._script.append(None if kind == "none" else Fault(kind, at_piece))

    def draw(self) -> Fault | None:
        self.drawn += 1
        if self._script:
            return self._script.popleft()
        rates = self._config.faults
        if rates.total() <= 0:
            return None
        roll = self._rng.random()
        at_piece = self._rng.randint(1, 4)
        edge = 0.0
        for kind, rate in zip(
            FAULT_KINDS,
            (rates.busy_503, rates.error_500, rates.reset, rates.midstream, rates.stall),
            strict=True,
        ):
            edge += rate
            if roll < edge:
                return Fault(kind, at_piece)
        return None
