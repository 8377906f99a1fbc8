"""A batch's child flow runs, from the parent's side: start one per part on the ``batch-shard``
deployment's work pool, then wait until every one has ended — by its state, or by its silence.

What Prefect 3.9.1 does when a process worker dies (read in ``prefect.workers.process`` and
``prefect.runner``, and measured here by SIGKILLing a worker with a flow run in progress): the
flow-run process is not in the worker's process group and is not killed with it. It runs on,
orphaned, until it next writes to its console — a pipe to the dead worker — where Rich's console
raises ``SystemExit`` and the engine reports the run Crashed; a child that never writes finishes
its part and reports Completed. A child whose process died too (its machine lost, an OOM kill)
reports nothing: its run stays Running, and a self-hosted Prefect server never marks it otherwise
(Prefect's answer is an automation on missing ``prefect.flow-run.heartbeat`` events:
https://docs.prefect.io/v3/advanced/detect-zombie-flows). So the parent does what that automation
does, for its own children only: it sets their heartbeat frequency (the run's job variables,
merged over the deployment's), and marks a child Crashed once it has been Running (or Pending)
for ``MISSED_HEARTBEATS`` periods without one. The wait ends; the batch fails naming the child,
and its rerun sends only what is missing (every shard a child wrote stays).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import arun_deployment
from prefect.events.filters import EventFilter
from prefect.states import Crashed

HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
HEARTBEAT_SECONDS = 30  # Prefect's least (flow_engine.MINIMUM_HEARTBEAT_INTERVAL)
# Periods without a heartbeat before a child is taken for dead: the multiple Prefect's own server
# uses for workers (server.services.foreman.inactivity_heartbeat_multiple, default 3).
MISSED_HEARTBEATS = 3
# A child Pending this long never started: its worker died after claiming it (no process, so no
# heartbeat). Generous: a worker on Cloud Run or Kubernetes first pulls an image.
PENDING_LIMIT_SECONDS = 900.0
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Child:
    """One child to start: its parameters and the names that make a retry find it again."""

    name: str
    parameters: dict[str, Any]


async def start_children(
    deployment: str, children: Sequence[Child], env: dict[str, str]
) -> list[FlowRun]:
    """A flow run of ``deployment`` per child, returned once created (not waited for); ``env``
    (the deployment's own job variables' env) gets the heartbeat frequency the wait relies on.
    The name is the idempotency key: a retried parent finds the runs it started."""
    job_env = {**env, HEARTBEAT_ENV: str(HEARTBEAT_SECONDS)}
    return list(
        await asyncio.gather(
            *(
                arun_deployment(
                    deployment,
                    parameters=child.parameters,
                    flow_run_name=child.name,
                    idempotency_key=child.name,
                    job_variables={"env": job_env},
                    timeout=0,
                )
                for child in children
            )
        )
    )


@dataclass(frozen=True)
class Limits:
    """When a child that has not ended is taken for dead."""

    heartbeat_seconds: float = HEARTBEAT_SECONDS  # the frequency its heartbeats were set to
    pending_seconds: float = PENDING_LIMIT_SECONDS


def silence(run: FlowRun, last_heartbeat: dt.datetime | None, now: dt.datetime) -> float:
    """Seconds since the child last gave a sign of life: entering its state, or a heartbeat."""
    assert run.state is not None
    since = run.state.timestamp
    if last_heartbeat is not None and last_heartbeat > since:
        since = last_heartbeat
    return (now - since).total_seconds()


def unresponsive(
    run: FlowRun, last_heartbeat: dt.datetime | None, now: dt.datetime, limits: Limits = Limits()
) -> str | None:
    """Why ``run`` is taken for dead (None: it is not): Running with no heartbeat for
    ``MISSED_HEARTBEATS`` periods, or Pending past the limit. Other states are left alone: a
    Scheduled child waits for a worker, a final one has ended."""
    if run.state is None:
        return None
    quiet = silence(run, last_heartbeat, now)
    beats = limits.heartbeat_seconds
    if run.state.type == StateType.RUNNING and quiet > MISSED_HEARTBEATS * beats:
        return f"no heartbeat for {quiet:.0f} s (one every {beats:g} s expected): process gone"
    if run.state.type == StateType.PENDING and quiet > limits.pending_seconds:
        return f"Pending for {quiet:.0f} s: its worker never started it"
    return None


async def last_heartbeat(client: PrefectClient, run: FlowRun) -> dt.datetime | None:
    """When ``run`` last sent a heartbeat event in its current state (None: not once)."""
    assert run.state is not None
    page = await client.read_events(
        EventFilter.model_validate(  # validated: Prefect's DateTime is pendulum's before 3.13
            {
                # Until tomorrow: a child's clock may run ahead of this one.
                "occurred": {"since": run.state.timestamp, "until": _tomorrow()},
                "event": {"name": [HEARTBEAT_EVENT]},
                "resource": {"id": [f"prefect.flow-run.{run.id}"]},
            }
        ),
        limit=1,
    )
    return max((event.occurred for event in page.events), default=None)


def _tomorrow() -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(days=1)


async def wait_for_children(
    runs: Sequence[FlowRun],
    limits: Limits = Limits(),
    *,
    poll_seconds: float = POLL_SECONDS,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> list[FlowRun]:
    """Every run as it ended (same order); an unresponsive one is set Crashed with the reason
    (as Prefect's zombie automation does) and counts as ended."""
    ended: dict[UUID, FlowRun] = {}
    async with get_client() as client:
        while len(ended) < len(runs):
            waiting = [run.id for run in runs if run.id not in ended]
            found = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=waiting))
            )
            for run in found:
                if run.state is not None and run.state.is_final():
                    ended[run.id] = run
                elif (reason := await _check(client, run, clock(), limits)) is not None:
                    message = f"Marked Crashed by its parent: {reason}"
                    await client.set_flow_run_state(run.id, Crashed(message=message), force=True)
                    ended[run.id] = await client.read_flow_run(run.id)
            if len(ended) < len(runs):
                await asyncio.sleep(poll_seconds)
    return [ended[run.id] for run in runs]


async def _check(
    client: PrefectClient, run: FlowRun, now: dt.datetime, limits: Limits
) -> str | None:
    """``unresponsive``, reading the heartbeats only once the state alone is old enough."""
    if unresponsive(run, None, now, limits) is None:
        return None
    beat = await last_heartbeat(client, run) if run.state and run.state.is_running() else None
    return unresponsive(run, beat, now, limits)
