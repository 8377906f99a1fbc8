"""A batch over several Prefect workers: the planned shards split into disjoint ranges, each range
run by a child flow run of the ``batch-shard`` deployment, and the children's reports merged.

How the exactly-once rules (``tasks.batch.outputs``) hold with several writers:

- The parent holds the output's lease; a child never takes it, it checks that its parent still
  holds it (``lease.check_held_by``) before it starts and before every shard it writes.
- Every child plans the same shards as the parent: it reads the output as it was before the run
  (``BeforeRun`` hides the shards named after this run's token, which sort after every earlier
  run's), so shard ``seq`` means the same prompts to all of them; each sends only its range and
  writes ``<run>-<seq>`` shards, which no other child writes.
- A retried child (Prefect's flow retries) skips the ids its range already has in this run's
  shards and writes under ``<run>-r<attempt>``, a newer name; a crashed child's shards are plain
  shards of an unfinished run, so a rerun sends only what is missing.
- Each child writes its counts to ``<output>/parts/<run>-w<k>.json`` (no result storage needed
  on any worker); the parent merges them into one manifest.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

from prefect.artifacts import acreate_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL
from pydantic import BaseModel, Field

from tasks.batch.children import Child, start_children, wait_for_children
from tasks.batch.dispatch import RunTotals
from tasks.batch.engine import EngineStats, RequestEngine
from tasks.batch.lanes import Lane, LaneStats
from tasks.batch.lease import check_held_by
from tasks.batch.limiter import LatencyHistogram
from tasks.batch.manifest import BatchManifest
from tasks.batch.outputs import ERRORS, RESULTS, ShardWriter, iter_shard_records, shard_order
from tasks.batch.params import BatchParams
from tasks.batch.plan import Shard
from tasks.batch.stores import ObjectInfo, ObjectStore
from tasks.errors import BatchFailedError, ConfigurationError

CHILD_FLOW = "batch-shard"
CHILD_DEPLOYMENT = f"{CHILD_FLOW}/batch-shard"
PARTS = "parts/"
HOW_TO_DEPLOY = (
    "declare it with `prefect deploy --name batch-shard` (prefect.yaml) and start workers on "
    "its pool with `prefect worker start --pool <pool>`; on the local stack `./dev stack` does "
    "both (two process workers)"
)


class ShardPart(BaseModel):
    """A child's share of a run: shards ``first``..``last`` (inclusive) of the parent's plan."""

    run: str = Field(description="The parent run's token: names this run's shards.")
    parent_flow_run_id: str | None = Field(description="The flow run holding the output lease.")
    worker: int = Field(ge=1, description="Which part (1-based).")
    first: int = Field(ge=1, description="First shard sequence number of this part.")
    last: int = Field(ge=1, description="Last shard sequence number of this part (inclusive).")
    planned: int = Field(ge=0, description="Shards the parent planned in all (checked).")

    @property
    def report_name(self) -> str:
        return f"{PARTS}{self.run}-w{self.worker}.json"


def split_parts(shards: int, workers: int, *, run: str, parent: str | None) -> list[ShardPart]:
    """``shards`` planned shards as at most ``workers`` contiguous, disjoint, non-empty ranges of
    nearly equal size (sizes differ by at most one)."""
    if workers < 1:
        raise ConfigurationError(f"workers must be at least 1, not {workers}")
    count = min(workers, shards)
    parts, first = [], 1
    for k in range(count):
        size = shards // count + (k < shards % count)
        last = first + size - 1
        parts.append(
            ShardPart(
                run=run,
                parent_flow_run_id=parent,
                worker=k + 1,
                first=first,
                last=last,
                planned=shards,
            )
        )
        first += size
    return parts


def count_planned(shards: Iterator[Shard]) -> int:
    """Consume the plan (the ledger notes what this run admits, for reconciliation)."""
    return sum(1 for _ in shards)


class BeforeRun:
    """``store`` as it was before run ``run``: its shards (names ``<run>...``) are not listed."""

    def __init__(self, store: ObjectStore, run: str) -> None:
        self._store, self._run = store, run
        self.base_uri = store.base_uri

    def list(self, prefix: str = "", match_glob: str | None = None) -> Iterator[ObjectInfo]:
        for info in self._store.list(prefix, match_glob):
            if shard_order(info.name) < self._run:
                yield info

    def uri_of(self, name: str) -> str:
        return self._store.uri_of(name)

    def stat(self, name: str) -> ObjectInfo | None:
        return self._store.stat(name)

    def open_read(self, name: str) -> IO[bytes]:
        return self._store.open_read(name)

    def read_bytes(self, name: str) -> bytes:
        return self._store.read_bytes(name)

    def create(self, name: str, data: bytes) -> None:
        raise TypeError("a read-only view")

    def put(self, name: str, data: bytes) -> None:
        raise TypeError("a read-only view")

    def delete(self, name: str, generation: int | None = None) -> None:
        raise TypeError("a read-only view")

    def read_versioned(self, name: str) -> tuple[bytes, int] | None:
        return self._store.read_versioned(name)

    def write_if(self, name: str, data: bytes, generation: int) -> int:
        raise TypeError("a read-only view")


@dataclass
class Resumed:
    """What earlier attempts of this child wrote in its range: those ids are not sent again."""

    ids: set[str]
    succeeded: int = 0
    failed: int = 0
    written: list[str] | None = None


def written_in_range(store: ObjectStore, part: ShardPart) -> Resumed:
    resumed = Resumed(set(), written=[])
    for kind in (RESULTS, ERRORS):
        for info in store.list(kind + part.run):
            seq = info.name.rpartition("-")[2].partition(".")[0]
            if not (seq.isdigit() and part.first <= int(seq) <= part.last):
                continue
            cast(list[str], resumed.written).append(store.uri_of(info.name))
            for record in iter_shard_records(store, info.name):
                if record["id"] not in resumed.ids:
                    resumed.ids.add(record["id"])
                    resumed.succeeded += kind == RESULTS
                    resumed.failed += kind == ERRORS
    return resumed


def shards_of_part(shards: Iterator[Shard], part: ShardPart, skip: set[str]) -> Iterator[Shard]:
    """The part's shards of the plan, without the ids in ``skip``; checks the plan has the
    parent's number of shards (the input changed under the run otherwise)."""
    seen = 0
    for shard in shards:
        seen = shard.seq
        if part.first <= shard.seq <= part.last:
            requests = [r for r in shard.requests if r.id not in skip]
            problems = [p for p in shard.problems if p.id not in skip]
            if requests or problems:
                yield Shard(shard.seq, requests, problems)
    if seen != part.planned:
        raise ConfigurationError(
            f"the input changed during run {part.run}: this worker planned {seen} shards, "
            f"the parent {part.planned}"
        )


class LeasedShardWriter(ShardWriter):
    """Writes a child's shards, each only while the parent still holds the output's lease."""

    def __init__(self, store: ObjectStore, run_token: str, part: ShardPart) -> None:
        super().__init__(store, run_token)
        self.part = part

    def write(
        self, seq: int, results: list[dict[str, Any]], errors: list[dict[str, Any]]
    ) -> list[str]:
        check_held_by(self.store, run=self.part.run, flow_run_id=self.part.parent_flow_run_id)
        return super().write(seq, results, errors)


class LaneReport(BaseModel):
    """One target's figures in one child (the children's lanes are the same targets, in order)."""

    sent: int
    ok: int
    failed: int
    retried: int
    latency_buckets: dict[int, int]
    in_flight: int
    backoffs: int
    instance_seconds: float
    circuit_opens: int
    circuit: str

    @classmethod
    def of(cls, lane: Lane) -> LaneReport:
        stats, limiter = lane.stats, lane.limiter
        return cls(
            sent=stats.sent,
            ok=stats.ok,
            failed=stats.failed,
            retried=stats.retried,
            latency_buckets=stats.latency.buckets,
            in_flight=limiter.max_limit,
            backoffs=limiter.decreases,
            instance_seconds=limiter.instance_seconds,
            circuit_opens=lane.breaker.opens,
            circuit=lane.breaker.state,
        )


class PartReport(BaseModel):
    """What one child did: merged by the parent into the run's manifest."""

    worker: int
    flow_run_id: str | None
    host: str
    pid: int
    parent_pid: int  # the worker process that started this flow run
    shards: tuple[int, int]
    succeeded: int
    failed: int
    input_errors: int
    resumed: int  # ids written by an earlier attempt of this child, not sent again
    written: list[str]
    error_kinds: dict[str, int]
    latency_buckets: dict[int, int]
    retries: int
    prompt_tokens: int
    eval_tokens: int
    lanes: list[LaneReport]
    cpu_seconds: float = 0.0  # the child process's CPU time (benchmarks: tests/bench)
    send_started_at: float = 0.0  # when it began sending (epoch seconds; benchmarks)
    send_seconds: float = 0.0  # how long it sent, its process start left out (benchmarks)

    @classmethod
    def of(
        cls,
        part: ShardPart,
        flow_run_id: str | None,
        totals: RunTotals,
        engine: RequestEngine,
        resumed: Resumed,
        cpu_seconds: float = 0.0,
        sending: tuple[float, float] = (0.0, 0.0),
    ) -> PartReport:
        return cls(
            worker=part.worker,
            flow_run_id=flow_run_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            parent_pid=os.getppid(),
            shards=(part.first, part.last),
            succeeded=totals.succeeded + resumed.succeeded,
            failed=totals.failed + resumed.failed,
            input_errors=totals.input_errors,
            resumed=len(resumed.ids),
            written=sorted(totals.written + (resumed.written or [])),
            error_kinds=dict(totals.error_kinds),
            latency_buckets=totals.latency.buckets,
            retries=engine.stats.retries,
            prompt_tokens=engine.stats.prompt_tokens,
            eval_tokens=engine.stats.eval_tokens,
            lanes=[LaneReport.of(lane) for lane in engine.lanes],
            cpu_seconds=round(cpu_seconds, 3),
            send_started_at=round(sending[0], 3),
            send_seconds=round(sending[1], 3),
        )

    def write(self, store: ObjectStore, part: ShardPart) -> None:
        store.put(part.report_name, self.model_dump_json(indent=2).encode())


def read_reports(store: ObjectStore, parts: list[ShardPart]) -> list[PartReport]:
    """The report of each part, in order (every part completed: each wrote one)."""
    return [PartReport.model_validate_json(store.read_bytes(p.report_name)) for p in parts]


async def run_parts(params: BatchParams, parts: list[ShardPart], in_flight: int) -> list[FlowRun]:
    """Run every part as a flow run of ``batch-shard`` and wait for all of them to end (Prefect
    retries a failed one first: the flow's ``retries``; a silent one is taken for dead:
    ``tasks.batch.children``); ``BatchFailedError`` if one did not complete."""
    engine = params.engine.model_copy(update={"in_flight": in_flight})
    child_params = params.model_copy(update={"engine": engine}).model_dump(mode="json")
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(CHILD_DEPLOYMENT)
    env = dict((deployment.job_variables or {}).get("env") or {})
    children = [
        Child(
            name=f"{part.run}-w{part.worker}",
            parameters={"params": child_params, "part": part.model_dump(mode="json")},
        )
        for part in parts
    ]
    runs = await wait_for_children(await start_children(CHILD_DEPLOYMENT, children, env))
    failed = [run for run in runs if run.state is None or not run.state.is_completed()]
    if failed:
        raise BatchFailedError(
            f"{len(failed)} of {len(parts)} parts did not complete: "
            + "; ".join(
                f"{run.name} {run.state.name if run.state else 'unknown'}"
                f"{_why(run)} ({flow_run_link(run.id)})"
                for run in failed
            )
            + " — a rerun sends only what is missing"
        )
    return runs


def _why(run: FlowRun) -> str:
    message = run.state.message if run.state else None
    return f" ({message})" if message else ""


def child_rows(runs: list[FlowRun], reports: list[PartReport]) -> list[dict[str, str]]:
    """Summary rows: each child flow run, its link, its shards and counts, where it ran."""
    return [
        {
            "metric": f"worker {report.worker}: {run.name}",
            "value": f"{flow_run_link(run.id)} — shards {report.shards[0]}..{report.shards[1]}, "
            f"{report.succeeded} succeeded, {report.failed} failed, on {report.host} "
            f"(worker pid {report.parent_pid})",
        }
        for run, report in zip(runs, reports, strict=True)
    ]


async def publish_with_children(
    manifest: BatchManifest, store: ObjectStore, key: str, children: list[dict[str, str]]
) -> None:
    """``manifest.json`` and the one summary artifact, with a row per child flow run."""
    await asyncio.to_thread(manifest.write, store)
    await acreate_table_artifact(
        key=key,
        table=manifest.summary_rows() + children,
        description=f"Batch inference summary ({len(children)} workers). "
        f"Cost assumption: {manifest.cost.assumption}.",
    )


def _histogram(buckets: dict[int, int]) -> LatencyHistogram:
    histogram = LatencyHistogram()
    histogram.buckets = dict(buckets)
    histogram.count = sum(buckets.values())
    return histogram


@dataclass
class _Limiter:
    max_limit: int = 0
    decreases: int = 0
    instance_seconds: float = 0.0


@dataclass
class _Breaker:
    opens: int = 0
    state: str = "closed"


@dataclass
class _Lane:
    stats: LaneStats
    limiter: _Limiter
    breaker: _Breaker


@dataclass
class MergedEngine:
    """The children's engines summed, lane by lane: what ``build_manifest`` reads of one."""

    stats: EngineStats
    lanes: list[_Lane]

    @property
    def max_limit(self) -> int:
        return sum(lane.limiter.max_limit for lane in self.lanes)

    @property
    def backoffs(self) -> int:
        return sum(lane.limiter.decreases for lane in self.lanes)


def merge_reports(reports: list[PartReport]) -> tuple[RunTotals, RequestEngine]:
    """The children's reports as one run's totals and engine figures (for ``build_manifest``)."""
    totals, stats = RunTotals(), EngineStats()
    lanes = (
        [_Lane(LaneStats(), _Limiter(), _Breaker()) for _ in reports[0].lanes] if reports else []
    )
    for report in reports:
        totals.succeeded += report.succeeded
        totals.failed += report.failed
        totals.input_errors += report.input_errors
        totals.written += report.written
        totals.error_kinds.update(Counter(report.error_kinds))
        totals.latency.merge(_histogram(report.latency_buckets))
        stats.retries += report.retries
        stats.prompt_tokens += report.prompt_tokens
        stats.eval_tokens += report.eval_tokens
        for lane, figures in zip(lanes, report.lanes, strict=True):
            lane.stats.sent += figures.sent
            lane.stats.ok += figures.ok
            lane.stats.failed += figures.failed
            lane.stats.retried += figures.retried
            lane.stats.latency.merge(_histogram(figures.latency_buckets))
            lane.limiter.max_limit += figures.in_flight
            lane.limiter.decreases += figures.backoffs
            lane.limiter.instance_seconds += figures.instance_seconds
            lane.breaker.opens += figures.circuit_opens
            if figures.circuit != "closed":  # the least healthy child's view of the target
                lane.breaker.state = figures.circuit
    # build_manifest reads only these figures of an engine (tasks.batch.manifest).
    return totals, cast(RequestEngine, MergedEngine(stats, lanes))


def share_of(in_flight: int, parts: int) -> int:
    """Each child's requests in flight: the service's slots shared, so together they fill it."""
    return max(1, math.ceil(in_flight / max(1, parts)))


async def check_child_deployment(workers: int) -> str:
    """The ``batch-shard`` deployment and its work pool exist (else a clear error saying how to
    create them); returns the pool's name. No worker online is no error: the children wait in
    the pool's queue until one starts, as any flow run of a deployment does."""
    async with get_client() as client:
        try:
            deployment = await client.read_deployment_by_name(CHILD_DEPLOYMENT)
        except ObjectNotFound:
            raise ConfigurationError(
                f"workers={workers} runs each part as a flow run of the deployment "
                f"{CHILD_DEPLOYMENT!r}, which does not exist: {HOW_TO_DEPLOY}"
            ) from None
        pool = deployment.work_pool_name
        try:
            found = pool is not None and bool(await client.read_work_pool(pool))
        except ObjectNotFound:
            found = False
        if not found or pool is None:
            raise ConfigurationError(
                f"workers={workers}: the work pool {pool!r} of the deployment "
                f"{CHILD_DEPLOYMENT!r} does not exist: {HOW_TO_DEPLOY}"
            )
    return pool


def flow_run_link(flow_run_id: object) -> str:
    """The Prefect UI page of a flow run."""
    ui = PREFECT_UI_URL.value() or (PREFECT_API_URL.value() or "").removesuffix("/api")
    return f"{ui}/runs/flow-run/{flow_run_id}"
