"""Ollama's scheduler, in the small: loaded runners, slots, the load queue and keep-alive.

- A request for a loaded model gets the runner directly (no queue, never 503).
- Otherwise it waits for the single loader (loads happen one at a time, in arrival order);
  at most ``OLLAMA_MAX_QUEUE`` requests may wait: one more gets 503 ``server busy``.
- Inside a runner, ``OLLAMA_NUM_PARALLEL`` slots; further requests wait with no limit.
- When the last request on a runner finishes, it expires after its keep-alive (0: at once,
  forever: never); ``expires_at`` is what ``/api/ps`` shows.
- A different ``num_ctx`` reloads the model (as Ollama's ``needsReload``), once it is idle.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from emulator.ollama.catalog import ModelEntry
from emulator.ollama.engine import Engine, LoadedModel
from emulator.ollama.errors import BUSY_MESSAGE, OllamaError

log = logging.getLogger("emulator.ollama")

# Go's time.Duration max (≈292 years): what Ollama stores for "forever".
_FOREVER_SECONDS = (2**63 - 1) / 1e9


@dataclass
class Runner:
    entry: ModelEntry
    model: LoadedModel
    num_ctx: int
    slots: asyncio.Queue[int]
    session_seconds: float
    ref_count: int = 0
    expires_at: float = 0.0  # unix seconds
    expiry: asyncio.TimerHandle | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[int]:
        """Wait (unbounded, FIFO) for a free slot, as the runner's semaphore does."""
        slot = await self.slots.get()
        try:
            yield slot
        finally:
            self.slots.put_nowait(slot)


def _expiry(now: float, seconds: float) -> float:
    return now + (_FOREVER_SECONDS if math.isinf(seconds) else seconds)


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        *,
        num_parallel: int,
        max_queue: int,
        keep_alive: float,
        max_loaded: int,
        default_num_ctx: int,
    ) -> None:
        self._engine = engine
        self.num_parallel = num_parallel
        self._max_queue = max_queue
        self.default_keep_alive = keep_alive
        self._max_loaded = max_loaded
        self.default_num_ctx = default_num_ctx
        self._runners: dict[str, Runner] = {}
        self._load_lock = asyncio.Lock()  # Ollama's single processPending goroutine
        self._pending = 0
        self._released = asyncio.Condition()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- acquiring and releasing -------------------------------------------------------------

    async def acquire(
        self, entry: ModelEntry, num_ctx: int | None, keep_alive: float | None
    ) -> Runner:
        """Return a loaded runner with one more reference; the caller must ``release`` it."""
        session = self.default_keep_alive if keep_alive is None else keep_alive
        ctx = num_ctx or self.default_num_ctx
        runner = self._runners.get(entry.name.key)
        if runner is not None and runner.num_ctx == ctx:
            return self._use(runner, session)
        if self._pending >= self._max_queue:
            raise OllamaError(503, BUSY_MESSAGE)
        self._pending += 1
        counted = True
        try:
            async with self._load_lock:
                self._pending -= 1
                counted = False
                runner = self._runners.get(entry.name.key)
                if runner is not None and runner.num_ctx == ctx:
                    return self._use(runner, session)
                if runner is not None:  # needs reload: wait until idle, then unload
                    while runner.ref_count > 0:
                        runner.idle.clear()
                        await runner.idle.wait()
                    await self._unload(runner)
                await self._make_room()
                runner = await self._load(entry, ctx, session)
                return self._use(runner, session)
        finally:
            if counted:
                self._pending -= 1

    def _use(self, runner: Runner, session: float) -> Runner:
        if runner.expiry is not None:
            runner.expiry.cancel()
            runner.expiry = None
        runner.ref_count += 1
        runner.session_seconds = session
        runner.expires_at = _expiry(time.time(), session)
        return runner

    def release(self, runner: Runner) -> None:
        runner.ref_count -= 1
        if runner.ref_count > 0:
            return
        runner.idle.set()
        if self._runners.get(runner.entry.name.key) is not runner:
            return
        session = runner.session_seconds
        runner.expires_at = _expiry(time.time(), session)
        loop = asyncio.get_running_loop()
        if session <= 0:
            self._spawn(self._expire(runner))
        elif not math.isinf(session):
            runner.expiry = loop.call_later(session, lambda: self._spawn(self._expire(runner)))
        self._spawn(self._notify_released())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify_released(self) -> None:
        async with self._released:
            self._released.notify_all()

    async def _expire(self, runner: Runner) -> None:
        if runner.ref_count == 0 and self._runners.get(runner.entry.name.key) is runner:
            await self._unload(runner)

    # -- loading and unloading -----------------------------------------------------------------

    async def _load(self, entry: ModelEntry, num_ctx: int, session: float) -> Runner:
        started = time.perf_counter()
        model = await self._engine.load(entry, num_ctx, self.num_parallel)
        slots: asyncio.Queue[int] = asyncio.Queue()
        for slot in range(self.num_parallel):
            slots.put_nowait(slot)
        runner = Runner(
            entry=entry, model=model, num_ctx=num_ctx, slots=slots, session_seconds=session
        )
        self._runners[entry.name.key] = runner
        log.info(
            "loaded %s in %.2fs (%d slot(s), num_ctx %d)",
            entry.describe(),
            time.perf_counter() - started,
            self.num_parallel,
            num_ctx,
        )
        return runner

    async def _make_room(self) -> None:
        """Evict the idle runner that expires first while at OLLAMA_MAX_LOADED_MODELS."""
        while len(self._runners) >= self._max_loaded:
            idle = [r for r in self._runners.values() if r.ref_count == 0]
            if idle:
                await self._unload(min(idle, key=lambda r: r.expires_at))
                continue
            async with self._released:
                await self._released.wait()

    async def _unload(self, runner: Runner) -> None:
        if self._runners.get(runner.entry.name.key) is runner:
            del self._runners[runner.entry.name.key]
        if runner.expiry is not None:
            runner.expiry.cancel()
            runner.expiry = None
        await runner.model.close()
        log.info("unloaded %s", runner.entry.display)

    async def unload(self, entry: ModelEntry) -> None:
        """``keep_alive: 0`` with no prompt: unload now, or as soon as the runner is idle."""
        runner = self._runners.get(entry.name.key)
        if runner is None:
            return
        runner.session_seconds = 0.0
        if runner.ref_count == 0:
            await self._unload(runner)

    def loaded(self) -> list[Runner]:
        return sorted(self._runners.values(), key=lambda r: r.expires_at, reverse=True)

    async def shutdown(self) -> None:
        for runner in list(self._runners.values()):
            await self._unload(runner)
