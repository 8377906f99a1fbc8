"""The server's state (one object, no module globals) and the inference pipeline shared by the
native and the OpenAI-compatible routes: fault draw → scheduler → slot → engine → faults."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from emulator.ollama.catalog import Catalog, ModelEntry, build_entry, find_standin, parse_spec
from emulator.ollama.config import ServerConfig
from emulator.ollama.engine import Done, Engine, Job, ModelFacts, Piece
from emulator.ollama.errors import BUSY_MESSAGE, RUNNER_STOPPED_MESSAGE, OllamaError
from emulator.ollama.scheduler import Runner, Scheduler
from emulator.ollama.sim import Fault, FaultInjector, SimEngine


class ResetRequested(Exception):
    """Raised inside a response to make the HTTP layer reset the TCP connection."""


@dataclass
class EmulatorState:
    config: ServerConfig
    catalog: Catalog
    engine: Engine
    scheduler: Scheduler
    faults: FaultInjector | None

    async def facts(self, entry: ModelEntry) -> ModelFacts:
        return await self.engine.facts(entry)

    def installable(self, text: str) -> ModelEntry | None:
        """What ``/api/pull`` can add: for llama, the real models the engine ships."""
        entry = self.catalog.lookup(text)
        if entry is not None:
            return entry
        if self.engine.name != "llama":
            return None
        try:
            standin = find_standin(text)
        except OllamaError:
            return None
        if standin is None:
            return None
        entry = build_entry(parse_spec(text), "llama")
        self.catalog.add(entry)
        return entry


def build_state(config: ServerConfig) -> EmulatorState:
    engine: Engine
    if config.engine == "sim":
        engine = SimEngine(config.sim)
    elif config.engine == "llama":
        from emulator.ollama.llama import LlamaEngine

        engine = LlamaEngine(num_threads=config.num_threads)
    else:
        raise ValueError(f"unknown engine {config.engine!r}")
    catalog = Catalog(build_entry(parse_spec(spec), config.engine) for spec in config.models)
    scheduler = Scheduler(
        engine,
        num_parallel=config.num_parallel,
        max_queue=config.max_queue,
        keep_alive=config.keep_alive,
        max_loaded=config.max_loaded_models,
        default_num_ctx=config.context_length,
    )
    faults = FaultInjector(config.sim) if config.engine == "sim" else None
    return EmulatorState(config, catalog, engine, scheduler, faults)


@dataclass
class Inference:
    events: AsyncIterator[Piece | Done]
    load_ns: int


async def start_inference(
    state: EmulatorState, entry: ModelEntry, job: Job, keep_alive: float | None, t0: int
) -> Inference:
    """Schedule a generation; errors before the runner is granted raise here (proper status)."""
    fault = state.faults.draw() if state.faults is not None and state.faults.active else None
    if fault is not None and fault.kind == "503":
        raise OllamaError(503, BUSY_MESSAGE)
    runner = await state.scheduler.acquire(entry, job.options.num_ctx, keep_alive)
    load_ns = time.perf_counter_ns() - t0
    return Inference(_run(state, runner, job, fault), load_ns)


async def _run(
    state: EmulatorState, runner: Runner, job: Job, fault: Fault | None
) -> AsyncIterator[Piece | Done]:
    try:
        async with runner.slot() as slot:
            if fault is not None and fault.kind == "500":
                raise OllamaError(500, RUNNER_STOPPED_MESSAGE)
            pending = fault if fault is not None and fault.kind != "500" else None
            sent = 0
            events = runner.model.generate(slot, job)
            try:
                async for event in events:
                    due = pending is not None and (
                        sent >= pending.at_piece or isinstance(event, Done)
                    )
                    if pending is not None and due:
                        kind, pending = pending.kind, None
                        if kind == "stall":
                            await asyncio.sleep(state.config.sim.stall_seconds)
                        elif kind == "midstream":
                            raise OllamaError(500, RUNNER_STOPPED_MESSAGE)
                        elif kind == "reset":
                            raise ResetRequested()
                    yield event
                    if isinstance(event, Piece):
                        sent += 1
            finally:
                await events.aclose()  # type: ignore[attr-defined]
    finally:
        state.scheduler.release(runner)
