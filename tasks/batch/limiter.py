"""An adaptive in-flight limit per target, and a fixed-memory latency histogram.

``AdaptiveLimiter`` (AIMD, written here in ~40 lines because no maintained asyncio library on
PyPI adapts a concurrency limit): at most ``limit`` requests in flight; a 429/503 halves the
limit — once per congestion epoch, so a burst of rejections sent at the old limit counts once —
and every ``limit`` successes add one back, up to the configured maximum. It also counts the
target's instance-seconds (Cloud Run runs ceil(in flight / concurrency) instances, at most max).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class AdaptiveLimiter:
    def __init__(self, max_limit: int, *, concurrency: int, max_instances: int) -> None:
        if max_limit < 1:
            raise ValueError("the in-flight limit must be >= 1")
        self.max_limit = max_limit
        self.limit = max_limit
        self.in_flight = 0
        self.decreases = 0
        self._epoch = 0
        self._credit = 0
        # FIFO of waiters; a release hands its slot to exactly one of them (no thundering herd).
        self._waiters: deque[asyncio.Future[None]] = deque()
        # Instance-seconds: Cloud Run runs ceil(in_flight / concurrency) instances, at most max.
        self._concurrency = max(1, concurrency)
        self._max_instances = max(1, max_instances)
        self._since = time.monotonic()
        self.instance_seconds = 0.0

    def _account(self) -> None:
        now = time.monotonic()
        busy = min(self._max_instances, math.ceil(self.in_flight / self._concurrency))
        self.instance_seconds += (now - self._since) * busy
        self._since = now

    def take(self) -> int:
        """Take a slot now, whatever the limit (the caller checked ``has_room``); its epoch."""
        self._account()
        self.in_flight += 1
        return self._epoch

    @property
    def has_room(self) -> bool:
        return self.in_flight < self.limit

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.take()
                waiter.set_result(None)

    async def acquire(self) -> int:
        if self.in_flight < self.limit and not self._waiters:
            return self.take()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(self._epoch, "other")  # the slot was ours already: give it back
            raise
        return self._epoch

    def release(self, epoch: int, outcome: str) -> None:
        """``outcome``: ``ok``, ``overload`` (429/503) or ``other``; wakes a waiter."""
        self.settle(epoch, outcome)
        self._wake()

    def settle(self, epoch: int, outcome: str) -> None:
        """Give a slot back and adapt the limit, waking no one (``LanePool`` does that)."""
        self._account()
        self.in_flight -= 1
        if outcome == "overload" and epoch == self._epoch:
            self._epoch += 1
            self.decreases += 1
            self.limit = max(1, self.limit // 2)
            self._credit = 0
        elif outcome == "ok" and self.limit < self.max_limit:
            self._credit += 1
            if self._credit >= self.limit:
                self._credit = 0
                self.limit += 1

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[list[str]]:
        """Holds one in-flight slot; set ``outcome[0]`` before leaving."""
        epoch = await self.acquire()
        outcome = ["other"]
        try:
            yield outcome
        finally:
            self.release(epoch, outcome[0])


class LatencyHistogram:
    """Log-spaced buckets (2 % wide): fixed memory for any number of samples, quantiles to 2 %."""

    _RATIO = math.log(1.02)

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0

    def add(self, seconds: float) -> None:
        bucket = math.floor(math.log(max(seconds, 1e-6)) / self._RATIO)
        self.buckets[bucket] = self.buckets.get(bucket, 0) + 1
        self.count += 1

    def merge(self, other: LatencyHistogram) -> None:
        for bucket, n in other.buckets.items():
            self.buckets[bucket] = self.buckets.get(bucket, 0) + n
        self.count += other.count

    def quantile(self, q: float) -> float | None:
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                return math.exp((bucket + 0.5) * self._RATIO)
        raise AssertionError("unreachable")
