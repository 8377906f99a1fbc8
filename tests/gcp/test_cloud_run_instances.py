"""The emulator's per-instance accounting of Cloud Run (emulator/gcp/cloud_run/instances.py),
on a clock the test moves: instances start when every live one is at its concurrency, a new
one makes its request wait the cold start, idle ones are scaled in after the tail, and the
billable time follows the billing setting."""

from __future__ import annotations

import pytest

from emulator.gcp.cloud_run.instances import InstancePool, Timing, overlap, usage


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool(clock: Clock, cold: float = 5.0, tail: float = 60.0) -> InstancePool:
    return InstancePool(clock, lambda: Timing(cold, tail))


def test_instances_fill_to_concurrency_then_start_with_a_cold_start() -> None:
    clock = Clock()
    p = pool(clock)
    a, wait_a = p.acquire("svc-00001-abc", 2, True)
    b, wait_b = p.acquire("svc-00001-abc", 2, True)
    c, wait_c = p.acquire("svc-00001-abc", 2, True)
    assert a is b and c is not a  # two per instance, then a new one
    assert (wait_a, wait_b, wait_c) == (5.0, 5.0, 5.0)  # both instances are still starting
    clock.now += 10
    p.release(a)
    d, wait_d = p.acquire("svc-00001-abc", 2, True)
    assert d is a and wait_d == 0.0  # a started instance with a free slot: no wait
    _, instances = p.snapshot()
    assert [i.number for i in instances] == [1, 2] and [i.requests for i in instances] == [3, 1]


def test_an_idle_instance_is_billed_until_the_tail_ends_then_scaled_in() -> None:
    clock = Clock()
    p = pool(clock, cold=5.0, tail=60.0)
    instance, _ = p.acquire("r1", 4, True)
    clock.now += 20
    p.release(instance)  # busy 20 s (5 s of it starting)
    clock.now += 30
    _, [live] = p.snapshot()
    assert live.stopped_at is None
    assert usage(clock.now, live)["billable_seconds"] == 50.0  # still up, idle, billed
    clock.now += 100
    now, [gone] = p.snapshot()
    assert gone.stopped_at == 1000.0 + 20 + 60  # scaled in when the tail ran out
    row = usage(now, gone)
    assert row["billable_seconds"] == 80.0 and row["busy_seconds"] == 20.0
    again, wait = p.acquire("r1", 4, True)
    assert again is not instance and again.number == 2 and wait == 5.0  # a cold start again


def test_request_based_billing_counts_start_up_and_busy_time_only() -> None:
    clock = Clock()
    p = pool(clock, cold=2.0, tail=600.0)
    instance, _ = p.acquire("r1", 4, False)
    clock.now += 10
    p.release(instance)
    clock.now += 100  # idle: not billed
    again, wait = p.acquire("r1", 4, False)
    assert again is instance and wait == 0.0
    clock.now += 5
    p.release(again)
    now, [copy] = p.snapshot()
    assert usage(now, copy)["billable_seconds"] == 15.0
    assert overlap(copy.spans(now), 1000.0, 1005.0) == 5.0


def test_a_new_revision_gets_new_instances_and_stop_all_ends_every_one() -> None:
    clock = Clock()
    p = pool(clock, cold=0.0)
    old, _ = p.acquire("r1", 4, True)
    new, wait = p.acquire("r2", 4, True)
    assert new is not old and wait == 0.0
    clock.now += 3
    p.stop_all()
    now, instances = p.snapshot()
    assert [i.stopped_at for i in instances] == [1003.0, 1003.0]
    assert sum(usage(now, i)["billable_seconds"] for i in instances) == pytest.approx(6.0)
