"""Several targets behind one engine: a lane per target, and the pool that picks one per attempt.

A ``Lane`` is one target as the engine sees it: its backend (its own connections and ID-token
audience), its ``AdaptiveLimiter`` (its slots: max instances × concurrency), its
``CircuitBreaker``, a pause (a 429/503's ``Retry-After``) and its counters.

``LanePool.acquire`` hands each attempt, among the lanes that have room, are not paused and whose
breaker admits it, the one furthest behind its slot share (stride scheduling: each attempt
advances its lane's pass by 1 / slots). So each target serves its slot share whether the targets
or the client are the bottleneck (least-busy picking drifts towards an even split when the client
is slow and few requests are in flight); a full lane is skipped, so a faster target takes more.
A lane that could not take its turns (full, paused, breaker open) is lifted to the pool's pass
when it takes one again, so it never makes up for lost turns in a burst. A lane whose breaker
is open gets nothing; its share goes to the others. A retried attempt avoids the lane that just
failed it while another lane can take it. When every breaker is open, the lanes take requests
anyway: with nowhere else to go, the retry policy decides (one target behaves as before).
Waiters are served first come, first served; a pause or a cool-down ending wakes them by timer.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tasks.batch.backends import Backend
from tasks.batch.breaker import CircuitBreaker
from tasks.batch.limiter import AdaptiveLimiter, LatencyHistogram

MAX_PAUSE_SECONDS = 300.0  # a Retry-After longer than this is taken as this


@dataclass
class LaneStats:
    """Attempts this target was sent, answered, failed (and of those, retried), and latency."""

    sent: int = 0
    ok: int = 0
    failed: int = 0
    retried: int = 0  # failed attempts whose prompt was sent again (here or elsewhere)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)


class Lane:
    def __init__(
        self,
        name: str,
        backend: Backend,
        limiter: AdaptiveLimiter,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.name = name
        self.backend = backend
        self.limiter = limiter
        self.breaker = breaker or CircuitBreaker()
        self.stats = LaneStats()
        self.paused_until = float("-inf")
        self.pass_ = 0.0  # stride scheduling: attempts taken / slots, lifted to the pool's pass

    def ready(self, now: float) -> bool:
        return self.limiter.has_room and now >= self.paused_until


Waiter = tuple[asyncio.Future[tuple[Lane, int]], Lane | None]


class LanePool:
    def __init__(self, lanes: Sequence[Lane], clock: Callable[[], float] = time.monotonic) -> None:
        if not lanes:
            raise ValueError("the engine needs at least one target")
        self.lanes = list(lanes)
        self._clock = clock
        self._fresh: deque[Waiter] = deque()  # first attempts
        self._again: list[Waiter] = []  # retries (each avoids a lane): they waited longest
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")
        self._pass = 0.0  # the pass of the last lane chosen: where every lane's turn stands

    def _choose(self, avoid: Lane | None, now: float) -> Lane | None:
        candidates = [lane for lane in self.lanes if lane.breaker.admits()] or self.lanes
        if avoid is not None and len(candidates) > 1:
            candidates = [lane for lane in candidates if lane is not avoid]
        ready = [lane for lane in candidates if lane.ready(now)]
        return min(ready, key=lambda lane: max(lane.pass_, self._pass)) if ready else None

    def _take(self, lane: Lane) -> tuple[Lane, int]:
        self._pass = max(self._pass, lane.pass_)
        lane.pass_ = self._pass + 1 / lane.limiter.max_limit
        lane.breaker.sent()
        lane.stats.sent += 1
        return lane, lane.limiter.take()

    async def acquire(self, avoid: Lane | None = None) -> tuple[Lane, int]:
        """A lane with a slot taken on it, and the limiter's epoch for ``release``."""
        if not self._fresh and not self._again:
            lane = self._choose(avoid, self._clock())
            if lane is not None:
                return self._take(lane)
        waiter: asyncio.Future[tuple[Lane, int]] = asyncio.get_running_loop().create_future()
        if avoid is None:
            self._fresh.append((waiter, None))
        else:
            self._again.append((waiter, avoid))
        self._schedule()
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                lane, epoch = waiter.result()  # the slot was ours already: give it back
                self.release(lane, epoch, "other", healthy=None)
            raise

    def release(
        self,
        lane: Lane,
        epoch: int,
        outcome: str,
        *,
        healthy: bool | None,
        pause_seconds: float | None = None,
    ) -> None:
        """``outcome`` for the limiter (``ok``, ``overload``, ``other``); ``healthy``: the target
        answered, or failed as a dying target does (for its breaker; None: no verdict, e.g.
        cancelled); ``pause_seconds``: its Retry-After."""
        lane.limiter.settle(epoch, outcome)
        if healthy is True:
            lane.breaker.success()
        elif healthy is False:
            lane.breaker.failure()
        else:
            lane.breaker.abandon()
        if pause_seconds is not None and pause_seconds > 0:
            until = self._clock() + min(pause_seconds, MAX_PAUSE_SECONDS)
            lane.paused_until = max(lane.paused_until, until)
        self._wake()

    def _wake(self) -> None:
        now = self._clock()
        for entry in list(self._again):
            waiter, avoid = entry
            lane = None if waiter.done() else self._choose(avoid, now)
            if waiter.done() or lane is not None:
                self._again.remove(entry)
            if lane is not None:
                waiter.set_result(self._take(lane))
        while self._fresh:
            waiter, _ = self._fresh[0]
            if not waiter.done():
                lane = self._choose(None, now)
                if lane is None:
                    break
                waiter.set_result(self._take(lane))
            self._fresh.popleft()
        self._schedule()

    def _schedule(self) -> None:
        """While anyone waits, wake when the next pause or cool-down ends."""
        if not self._fresh and not self._again:
            return
        now = self._clock()
        ends = [lane.paused_until for lane in self.lanes if lane.paused_until > now]
        ends += [lane.breaker.reopens_at for lane in self.lanes if lane.breaker.state == "open"]
        at = min(ends, default=float("inf"))
        if at == float("inf") or (self._timer is not None and self._timer_at <= at):
            return  # nothing to wait for, or an earlier wake is already set
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().call_later(max(0.0, at - now) + 0.001, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        self._wake()
