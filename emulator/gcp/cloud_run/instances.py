"""Per-instance accounting of one emulated Cloud Run service: what Cloud Run would bill.

The emulator serves a revision from one Ollama process; this module keeps the instances Cloud Run
would run for it. A request is put on the first live instance of the serving revision with a free
concurrency slot; when there is none, a new instance starts and the request waits out its cold
start (`cloud_run_cold_start_seconds`; Google: "Cloud Run instances with an attached L4 GPU with
drivers pre-installed start in approximately 5 seconds", docs/configuring/services/gpu). An
instance with nothing in flight stays up, idle, for `cloud_run_idle_tail_seconds` and is then
scaled in (Cloud Run keeps idle instances up to ~15 minutes; docs/about-instance-autoscaling).

Billable time (docs/configuring/billing-settings): with instance-based billing ("CPU always
allocated", which GPU services require: "GPU is billed for the entire duration of the instance
lifecycle") the whole lifetime, start to scale-in; with request-based billing the start-up plus
the time with at least one request in flight. Cloud Run rounds each instance's time up to 100 ms
(pricing page); the emulator does not round, so the metric and this accounting agree exactly.

Lazy: an idle instance is scaled in when the pool is next looked at; no timers, no threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Span = tuple[float, float]


@dataclass(frozen=True)
class Timing:
    """How long an instance takes to start, and how long it stays idle before scale-in."""

    cold_start_seconds: float = 0.0
    idle_tail_seconds: float = 900.0


@dataclass
class Instance:
    revision: str
    number: int
    started_at: float
    ready_at: float
    instance_based: bool
    in_flight: int = 0
    requests: int = 0
    busy: list[list[float]] = field(default_factory=list)  # [start, end]; end -1 while busy
    idle_since: float | None = None
    stopped_at: float | None = None

    def spans(self, now: float) -> list[Span]:
        """The billable spans up to `now` (or the scale-in), merged and ordered."""
        end = now if self.stopped_at is None else min(now, self.stopped_at)
        if self.instance_based:
            return [(self.started_at, end)] if end > self.started_at else []
        raw = [(self.started_at, self.ready_at)] + [
            (start, end if stop < 0 else min(stop, end)) for start, stop in self.busy
        ]
        return _merge(raw)

    def busy_seconds(self, now: float) -> float:
        return sum((now if stop < 0 else stop) - start for start, stop in self.busy)


def _merge(spans: list[Span]) -> list[Span]:
    merged: list[list[float]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(a, b) for a, b in merged]


def overlap(spans: list[Span], start: float, end: float) -> float:
    """Seconds of `spans` inside [start, end)."""
    return sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)


class InstancePool:
    """The instances of one service's revisions. Thread-safe: the ingress acquires and releases
    on its own event loop while Cloud Monitoring reads from the emulator's."""

    def __init__(self, clock: Callable[[], float], timing: Callable[[], Timing]) -> None:
        self._clock = clock
        self._timing = timing
        self._lock = threading.Lock()
        self._instances: list[Instance] = []

    def acquire(
        self, revision: str, concurrency: int, instance_based: bool
    ) -> tuple[Instance, float]:
        """An instance for one request, and the seconds the request waits for it to be ready."""
        with self._lock:
            now = self._clock()
            self._scale_in(now)
            live = [i for i in self._instances if i.stopped_at is None and i.revision == revision]
            instance = next((i for i in live if i.in_flight < max(1, concurrency)), None)
            if instance is None:
                cold = self._timing().cold_start_seconds
                number = 1 + max((i.number for i in self._instances), default=0)
                instance = Instance(revision, number, now, now + cold, instance_based)
                self._instances.append(instance)
            if instance.in_flight == 0:
                instance.busy.append([now, -1.0])
                instance.idle_since = None
            instance.in_flight += 1
            instance.requests += 1
            return instance, max(0.0, instance.ready_at - now)

    def release(self, instance: Instance) -> None:
        with self._lock:
            now = self._clock()
            instance.in_flight -= 1
            if instance.in_flight == 0:
                instance.busy[-1][1] = now
                instance.idle_since = now

    def stop_all(self) -> None:
        """The service is gone: every instance stops now."""
        with self._lock:
            now = self._clock()
            self._scale_in(now)
            for instance in self._instances:
                if instance.stopped_at is None:
                    instance.stopped_at = now

    def _scale_in(self, now: float) -> None:
        tail = self._timing().idle_tail_seconds
        for instance in self._instances:
            idle = instance.idle_since
            if instance.stopped_at is None and idle is not None and idle + tail <= now:
                instance.stopped_at = idle + tail

    def snapshot(self) -> tuple[float, list[Instance]]:
        """The time and a copy of every instance, idle ones past their tail scaled in."""
        with self._lock:
            now = self._clock()
            self._scale_in(now)
            copies = [
                Instance(**{**vars(i), "busy": [list(b) for b in i.busy]}) for i in self._instances
            ]
            return now, copies


def usage(now: float, instance: Instance) -> dict[str, Any]:
    """One instance's accounting, as `GET /_emulator/cloud_run/instances` shows it."""
    return {
        "revision": instance.revision,
        "instance": instance.number,
        "started_at": instance.started_at,
        "ready_at": instance.ready_at,
        "stopped_at": instance.stopped_at,
        "in_flight": instance.in_flight,
        "requests": instance.requests,
        "busy_seconds": round(instance.busy_seconds(now), 6),
        "billable_seconds": round(sum(b - a for a, b in instance.spans(now)), 6),
        "billing": "instance-based" if instance.instance_based else "request-based",
    }
