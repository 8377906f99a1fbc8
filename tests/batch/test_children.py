"""The parent's wait on a batch's child flow runs (``tasks.batch.children``): a child ends by its
state, or is taken for dead when Running without heartbeats (or Pending) too long, and is then
marked Crashed with the reason, so the parent never waits forever. The processes are real in
tests/batch/test_workers.py and tests/batch/test_scale_stack.py; here the flow runs are made by
hand on the session's Prefect server and the parent's clock is moved instead of waiting."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from typing import Any

import httpx
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.states import Completed, Pending, Running, Scheduled

from tasks.batch import children
from tasks.batch.children import (
    HEARTBEAT_ENV,
    HEARTBEAT_EVENT,
    HEARTBEAT_SECONDS,
    MISSED_HEARTBEATS,
    Child,
    Limits,
    last_heartbeat,
    start_children,
    unresponsive,
    wait_for_children,
)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _run(kind: StateType, since: dt.datetime) -> FlowRun:
    return FlowRun(flow_id=uuid.uuid4(), name="r-w1", state=State(type=kind, timestamp=since))


def _later(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_a_running_child_is_dead_after_missed_heartbeats_only() -> None:
    limits = Limits(heartbeat_seconds=30, pending_seconds=900)
    window = MISSED_HEARTBEATS * 30
    running = _run(StateType.RUNNING, T0)
    assert unresponsive(running, None, _later(window), limits) is None
    reason = unresponsive(running, None, _later(window + 1), limits)
    assert reason is not None and "no heartbeat for 91 s" in reason and "every 30 s" in reason
    # A heartbeat restarts the count; one from before the state (an earlier attempt) does not.
    assert unresponsive(running, _later(60), _later(window + 1), limits) is None
    assert unresponsive(running, _later(-10), _later(window + 1), limits) is not None


def test_pending_too_long_is_dead_and_scheduled_or_final_children_are_left_alone() -> None:
    limits = Limits(heartbeat_seconds=30, pending_seconds=900)
    assert unresponsive(_run(StateType.PENDING, T0), None, _later(900), limits) is None
    reason = unresponsive(_run(StateType.PENDING, T0), None, _later(901), limits)
    assert reason is not None and "never started it" in reason
    for kind in (StateType.SCHEDULED, StateType.COMPLETED, StateType.CRASHED, StateType.PAUSED):
        assert unresponsive(_run(kind, T0), None, _later(10**6), limits) is None


def test_children_get_their_heartbeat_over_the_deployments_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    async def run_deployment(name: str, **options: Any) -> FlowRun:
        calls.append((name, options))
        return FlowRun(flow_id=uuid.uuid4(), name=options["flow_run_name"])

    monkeypatch.setattr(children, "arun_deployment", run_deployment)
    wanted = [Child("R-w1", {"part": 1}), Child("R-w2", {"part": 2})]
    env = {"KEEP": "me", HEARTBEAT_ENV: "180"}
    runs = asyncio.run(start_children("batch-shard/batch-shard", wanted, env))
    assert [r.name for r in runs] == ["R-w1", "R-w2"]
    assert env == {"KEEP": "me", HEARTBEAT_ENV: "180"}  # the deployment's, untouched
    for (name, options), child in zip(calls, wanted, strict=True):
        assert name == "batch-shard/batch-shard" and options["parameters"] == child.parameters
        assert options["job_variables"] == {"env": {"KEEP": "me", HEARTBEAT_ENV: "30"}}
        assert options["idempotency_key"] == options["flow_run_name"] == child.name
        assert options["timeout"] == 0  # started, not waited for: the watch waits
    assert HEARTBEAT_SECONDS == 30


@flow(name="children-test")
def _idle() -> None:
    """Only its flow runs are used, made by hand."""


async def _made(state: State[Any]) -> FlowRun:
    async with get_client() as client:
        return await client.create_flow_run(_idle, state=state, name=f"child-{uuid.uuid4().hex}")


def _send_heartbeat(api: str, run: FlowRun, occurred: dt.datetime) -> None:
    """A heartbeat event as a flow-run process sends it (``flow_engine._emit_flow_run_heartbeat``:
    the flow run as resource), through the events API."""
    event = {
        "id": str(uuid.uuid4()),
        "occurred": occurred.isoformat(),
        "event": HEARTBEAT_EVENT,
        "resource": {"prefect.resource.id": f"prefect.flow-run.{run.id}"},
        "related": [],
        "payload": {},
    }
    httpx.post(f"{api}/events", json=[event], timeout=60).raise_for_status()


async def _heartbeat_seen(run: FlowRun) -> dt.datetime:
    """The event, once the server has stored it (its event persister flushes every few s)."""
    deadline = time.monotonic() + 120
    async with get_client() as client:
        while (beat := await last_heartbeat(client, run)) is None:
            assert time.monotonic() < deadline, "the heartbeat event was never stored"
            await asyncio.sleep(0.5)
    return beat


def test_the_wait_ends_every_silent_child_as_crashed_and_keeps_the_live_ones(
    prefect_api: str,
) -> None:
    async def scenario() -> list[FlowRun]:
        live, silent, stuck, queued = [
            await _made(state) for state in (Running(), Running(), Pending(), Scheduled())
        ]
        ahead = dt.timedelta(seconds=1000)  # the parent's clock: past every limit
        _send_heartbeat(prefect_api, live, dt.datetime.now(dt.UTC) + ahead)
        await _heartbeat_seen(live)
        waiting = asyncio.create_task(
            wait_for_children(
                [live, silent, stuck, queued],
                Limits(heartbeat_seconds=30, pending_seconds=900),
                poll_seconds=0.2,
                clock=lambda: dt.datetime.now(dt.UTC) + ahead,
            )
        )
        async with get_client() as client:
            deadline = time.monotonic() + 120
            while (await client.read_flow_run(stuck.id)).state_type != StateType.CRASHED:
                assert time.monotonic() < deadline and not waiting.done()
                await asyncio.sleep(0.2)
            # Both the silent and the stuck child are ended in the same round as the live one
            # was looked at; the live and the queued ones still wait.
            assert not waiting.done()
            for run in (live, queued):
                await client.set_flow_run_state(run.id, Completed(), force=True)
        return await asyncio.wait_for(waiting, 120)

    live, silent, stuck, queued = asyncio.run(scenario())
    assert [r.state_type for r in (live, silent, stuck, queued)] == [
        StateType.COMPLETED,
        StateType.CRASHED,
        StateType.CRASHED,
        StateType.COMPLETED,
    ]
    assert silent.state is not None and stuck.state is not None
    assert (silent.state.message or "").startswith("Marked Crashed by its parent: no heartbeat")
    assert "its worker never started it" in (stuck.state.message or "")


@pytest.mark.parametrize("kind", [StateType.FAILED, StateType.CANCELLED])
def test_a_child_ended_otherwise_ends_the_wait_as_it_is(prefect_api: str, kind: StateType) -> None:
    async def scenario() -> FlowRun:
        run = await _made(Running())
        async with get_client() as client:
            await client.set_flow_run_state(run.id, State(type=kind), force=True)
        (ended,) = await wait_for_children([run], poll_seconds=0.2)
        return ended

    assert asyncio.run(scenario()).state_type == kind
