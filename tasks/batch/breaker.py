"""A circuit breaker per target: stop sending to a target that keeps failing, probe it later.

Closed: requests go. After ``failures`` consecutive failures (connection errors, timeouts, 5xx —
what a dead or dying target answers) it opens: nothing is sent for a cool-down. Then it is
half-open: one request (a real prompt) probes it; an answer closes it, a failure opens it again
for twice the cool-down (at most ``max_cooldown_seconds``). A 429 or a client error is an answer
(the target is alive), so it counts as a success here; back-pressure is the limiter's business.

Written here (~60 lines) because the breakers on PyPI (pybreaker, aiobreaker, circuitbreaker)
wrap a call and raise when open, where the engine needs to ask "may this target take one more
request now, and when can it next?" to pick among targets; and they give no half-open probe limit
or injectable clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    def __init__(
        self,
        *,
        failures: int = 5,
        cooldown_seconds: float = 5.0,
        max_cooldown_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1:
            raise ValueError("failures must be >= 1")
        self.threshold = failures
        self.initial_cooldown = cooldown_seconds
        self.max_cooldown = max(cooldown_seconds, max_cooldown_seconds)
        self.cooldown = cooldown_seconds
        self.opens = 0  # times it opened (for the summary)
        self._clock = clock
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        return "half-open" if self._clock() >= self.reopens_at else "open"

    @property
    def reopens_at(self) -> float:
        """When an open breaker lets a probe through (``-inf`` when closed)."""
        return float("-inf") if self._opened_at is None else self._opened_at + self.cooldown

    def admits(self) -> bool:
        """May one more request go now? Closed: yes; half-open: only while no probe is out."""
        state = self.state
        return state == "closed" or (state == "half-open" and not self._probing)

    def sent(self) -> None:
        """A request went out (a half-open breaker's one probe)."""
        if self.state == "half-open":
            self._probing = True

    def abandon(self) -> None:
        """A request ended with no verdict (cancelled): a probe may go again."""
        self._probing = False

    def success(self) -> None:
        self._consecutive = 0
        if self._opened_at is not None and (self._probing or self.state == "half-open"):
            self._opened_at, self._probing = None, False
            self.cooldown = self.initial_cooldown

    def failure(self) -> None:
        self._consecutive += 1
        if self._opened_at is not None:
            if self._probing:  # the probe failed: open again, for longer
                self._probing = False
                self.cooldown = min(self.cooldown * 2, self.max_cooldown)
                self._opened_at = self._clock()
            return
        if self._consecutive >= self.threshold:
            self._opened_at = self._clock()
            self.opens += 1
