"""Running the planned shards: a few shard-level Prefect tasks at once through one engine.

Each ``process-shard`` task sends its prompts through the shared ``RequestEngine`` and writes its
own result and error shard as soon as it is done; never a task per prompt (a task run costs
~30 ms on the server). Enough shards run at once that one shard's tail never leaves slots idle.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from tasks.batch.engine import RequestEngine
from tasks.batch.limiter import LatencyHistogram
from tasks.batch.outputs import ShardWriter
from tasks.batch.plan import PlanStats, Shard
from tasks.batch.progress import ProgressReporter
from tasks.batch.records import error_kind, error_record

PROGRESS_KEY = "batch-inference-progress"


@dataclass
class ShardResult:
    seq: int
    succeeded: int
    failed: int
    input_errors: int
    problem_bytes: int
    written: list[str]
    latency: LatencyHistogram
    error_kinds: Counter[str] = field(default_factory=Counter)


@dataclass
class RunTotals:
    """The finished shards folded as they come, so a run of any length holds one of these."""

    succeeded: int = 0
    failed: int = 0
    input_errors: int = 0
    problem_bytes: int = 0
    written: list[str] = field(default_factory=list)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    error_kinds: Counter[str] = field(default_factory=Counter)  # "HTTP 500", "input: ..."

    def add(self, shard: ShardResult) -> None:
        self.succeeded += shard.succeeded
        self.failed += shard.failed
        self.input_errors += shard.input_errors
        self.problem_bytes += shard.problem_bytes
        self.written += shard.written
        self.latency.merge(shard.latency)
        self.error_kinds.update(shard.error_kinds)


@task(
    name="process-shard", task_run_name="shard-{seq}", cache_policy=NO_CACHE, persist_result=False
)
async def process_shard(
    seq: int, shard: Shard, engine: RequestEngine, writer: ShardWriter
) -> ShardResult:
    """Send the shard's prompts through the shared engine, then write its result and error shard."""
    outcomes = await asyncio.gather(*(engine.run(request) for request in shard.requests))
    results = [o.record for o in outcomes if o.ok]
    errors = [o.record for o in outcomes if not o.ok]
    errors += [error_record(p, p.reason) for p in shard.problems]
    errors.sort(key=lambda r: (r["file"], r["line"]))
    written = await asyncio.to_thread(writer.write, seq, results, errors)
    histogram = LatencyHistogram()
    for outcome in outcomes:
        if outcome.ok:
            histogram.add(outcome.latency_s)
    return ShardResult(
        seq,
        succeeded=len(results),
        failed=len(errors) - len(shard.problems),
        input_errors=len(shard.problems),
        problem_bytes=sum(p.size for p in shard.problems),
        written=written,
        latency=histogram,
        error_kinds=Counter(error_kind(record) for record in errors),
    )


class _Progress:
    """The progress artifact and bar: bytes of the input done, and a one-line status."""

    def __init__(
        self, total_bytes: int, interval: float, plan: PlanStats, engine: RequestEngine
    ) -> None:
        self.reporter = ProgressReporter(
            total_bytes, artifact_interval_seconds=interval, key=PROGRESS_KEY
        )
        self.plan, self.engine, self.totals = plan, engine, RunTotals()

    def done_bytes(self) -> int:
        return self.plan.skipped_bytes + self.engine.stats.done_bytes + self.totals.problem_bytes

    def status(self) -> str:
        s, plan, engine = self.engine.stats, self.plan, self.engine
        status = (
            f"{s.succeeded} ok, {s.failed} failed, "
            f"{plan.skipped_ok + plan.skipped_failed} skipped, "
            f"{s.retries} retries, in flight {engine.in_flight}/{engine.limit}"
        )
        if len(engine.lanes) > 1:  # per target: answers, and a breaker that is not closed
            status += "; " + ", ".join(
                f"{lane.name} {lane.stats.ok}"
                + ("" if lane.breaker.state == "closed" else f" ({lane.breaker.state})")
                for lane in engine.lanes
            )
        return status

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            await self.reporter.update(self.done_bytes(), self.status())


async def run_shards(
    shards: Iterator[Shard],
    engine: RequestEngine,
    writer: ShardWriter,
    plan: PlanStats,
    *,
    shard_size: int,
    total_bytes: int,
    progress_interval_seconds: float,
) -> RunTotals:
    """Dispatch every planned shard as it is planned, then close the engine; progress meanwhile."""
    progress = _Progress(total_bytes, progress_interval_seconds, plan, engine)
    max_active = 1 + math.ceil(engine.max_limit / shard_size)
    await progress.reporter.start()
    ticker = asyncio.create_task(progress.tick())
    active: set[asyncio.Task[ShardResult]] = set()
    try:
        while (shard := await asyncio.to_thread(next, shards, None)) is not None:
            run = process_shard(shard.seq, cast(Shard, quote(shard)), engine, writer)
            active.add(asyncio.create_task(run))
            while len(active) >= max_active:
                finished, still = await asyncio.wait(active, return_when=asyncio.FIRST_COMPLETED)
                active = set(still)
                for done in finished:
                    progress.totals.add(done.result())
        for next_done in asyncio.as_completed(active):
            progress.totals.add(await next_done)
        active = set()
    finally:
        for pending in active:
            pending.cancel()
        ticker.cancel()
        await engine.aclose()
        progress.reporter.stop()
    await progress.reporter.update(progress.done_bytes(), progress.status(), force=True)
    return progress.totals
