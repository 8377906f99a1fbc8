"""``manifest.json``: what one run did, typed (``BatchManifest``), and its summary table.

The JSON keys are the contract readers rely on (``counts``, ``this_run``, ``model``, ``service``,
``timings``, ``tokens``, ``cost``, ``shards``, ...); ``uri`` (where the manifest was written) is in
the returned manifest, not in the file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from prefect.artifacts import acreate_table_artifact
from pydantic import BaseModel

from tasks.batch.cost import CostEstimate, estimate_cost
from tasks.batch.dispatch import RunTotals
from tasks.batch.engine import RequestEngine
from tasks.batch.outputs import MANIFEST_SCHEMA_VERSION, write_manifest
from tasks.batch.params import BatchParams
from tasks.batch.plan import PlanStats
from tasks.batch.policy import commonest, policy_violation
from tasks.batch.stores import ObjectStore
from tasks.batch.target import Target

RECONCILIATION = (
    "one record per id: its result if any, else its newest error record "
    "(see tasks/batch/outputs.py)"
)


class Counts(BaseModel):
    total: int
    succeeded: int
    failed: int
    skipped: int


class ThisRun(BaseModel):
    sent: int
    succeeded: int
    failed: int
    input_errors: int
    skipped_succeeded: int
    skipped_failed: int
    retried_errors: int
    duplicate_ids: int
    blank_lines: int
    retries: int
    backoffs: int
    exhausted_ids: int = 0  # failed ids not sent again: max_attempts_per_id reached
    error_kinds: dict[str, int] = {}  # "HTTP 500": 3, "input: malformed JSON": 1, ...


class ServiceInfo(BaseModel):
    name: str | None
    uri: str
    api: str
    max_instances: int
    concurrency: int
    in_flight: int


class Latency(BaseModel):
    p50: float | None
    p95: float | None
    p99: float | None


class Timings(BaseModel):
    started_at: str
    finished_at: str
    duration_s: float
    latency_s: Latency


class Tokens(BaseModel):
    prompt: int
    eval: int
    eval_per_s: float | None


class Shards(BaseModel):
    written: list[str]
    retired_error_shards: list[str]


class BatchManifest(BaseModel):
    schema_version: int = MANIFEST_SCHEMA_VERSION
    counts: Counts
    this_run: ThisRun
    model: str
    service: ServiceInfo
    input: str
    output: str
    run: str
    timings: Timings
    tokens: Tokens
    cost: CostEstimate
    shards: Shards
    reconciliation: str = RECONCILIATION
    failure: str | None = None  # why the run ended Failed (tasks.batch.policy), None: it did not
    flow_run_id: str | None = None
    uri: str | None = None  # where it was written; not in the file itself

    def write(self, store: ObjectStore) -> str:
        """Write ``manifest.json`` (replacing the last run's); sets and returns ``uri``."""
        self.uri = write_manifest(store, self.model_dump(mode="json", exclude={"uri"}))
        return self.uri

    async def publish(self, store: ObjectStore, artifact_key: str) -> None:
        """Write ``manifest.json`` and the summary table artifact."""
        await asyncio.to_thread(self.write, store)
        await acreate_table_artifact(
            key=artifact_key,
            table=self.summary_rows(),
            description=f"Batch inference summary. Cost assumption: {self.cost.assumption}.",
        )

    def summary_rows(self) -> list[dict[str, str]]:
        """The run's summary artifact: one ``metric``/``value`` row each."""

        def fmt(value: float | None, unit: str = "") -> str:
            return "n/a" if value is None else f"{value:.3f}{unit}"

        counts, tokens, latency = self.counts, self.tokens, self.timings.latency_s
        rows: list[tuple[str, Any]] = [
            ("total", counts.total),
            ("succeeded", counts.succeeded),
            ("failed", counts.failed),
            ("skipped (done by earlier runs)", counts.skipped),
            ("tokens in", tokens.prompt),
            ("tokens out", tokens.eval),
            ("tokens out / s", tokens.eval_per_s),
            ("latency p50", fmt(latency.p50, " s")),
            ("latency p95", fmt(latency.p95, " s")),
            ("latency p99", fmt(latency.p99, " s")),
            ("duration", f"{self.timings.duration_s} s"),
            ("retries", self.this_run.retries),
            ("errors by kind", commonest(Counter(self.this_run.error_kinds), 5)),
            ("failure policy", self.failure or "passed"),
            ("instance-seconds", self.cost.instance_seconds),
            ("estimated GPU cost (USD)", self.cost.usd),
            ("cost assumption", self.cost.assumption),
            ("model", self.model),
            ("service", self.service.name or self.service.uri),
            ("manifest", self.uri),
        ]
        return [{"metric": name, "value": str(value)} for name, value in rows]


@dataclass(frozen=True)
class RunClock:
    """When the run started, and its token (``<UTC start>-<random hex>``, sorting by run)."""

    started_at: dt.datetime
    started: float  # time.monotonic()
    token: str

    @classmethod
    def start(cls) -> RunClock:
        now = dt.datetime.now(dt.UTC)
        # Microseconds: shard names order runs (outputs.shard_order), and two runs often start
        # within one second.
        return cls(
            now, time.monotonic(), now.strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(4)
        )


@dataclass(frozen=True)
class RunFacts:
    """Everything a finished run knows, from which its manifest is made."""

    params: BatchParams
    target: Target
    output: str
    clock: RunClock
    plan: PlanStats
    totals: RunTotals
    engine: RequestEngine
    retired: list[str]


def build_manifest(facts: RunFacts, flow_run_id: str | None) -> BatchManifest:
    """The manifest of a finished run (counts include what earlier runs did: ``skipped``)."""
    plan, totals, stats, limiter = (
        facts.plan,
        facts.totals,
        facts.engine.stats,
        facts.engine.limiter,
    )
    duration = time.monotonic() - facts.clock.started
    new_failed = totals.failed + totals.input_errors
    skipped = plan.skipped_ok + plan.skipped_failed
    return BatchManifest(
        counts=Counts(
            total=totals.succeeded + new_failed + skipped,
            succeeded=totals.succeeded + plan.skipped_ok,
            failed=new_failed + plan.skipped_failed,
            skipped=skipped,
        ),
        this_run=ThisRun(
            sent=totals.succeeded + totals.failed,
            succeeded=totals.succeeded,
            failed=new_failed,
            input_errors=totals.input_errors,
            skipped_succeeded=plan.skipped_ok,
            skipped_failed=plan.skipped_failed,
            retried_errors=plan.retried_errors,
            duplicate_ids=plan.duplicates,
            blank_lines=plan.blank,
            retries=stats.retries,
            backoffs=limiter.decreases,
            exhausted_ids=plan.exhausted,
            error_kinds=dict(totals.error_kinds.most_common()),
        ),
        model=facts.params.model,
        service=ServiceInfo(
            name=facts.target.service,
            uri=facts.target.uri,
            api=facts.params.engine.api,
            max_instances=facts.target.max_instances,
            concurrency=facts.target.concurrency,
            in_flight=limiter.max_limit,
        ),
        input=facts.params.input,
        output=facts.output,
        run=facts.clock.token,
        timings=Timings(
            started_at=facts.clock.started_at.isoformat(),
            finished_at=dt.datetime.now(dt.UTC).isoformat(),
            duration_s=round(duration, 3),
            latency_s=Latency(**{f"p{q}": totals.latency.quantile(q / 100) for q in (50, 95, 99)}),
        ),
        tokens=Tokens(
            prompt=stats.prompt_tokens,
            eval=stats.eval_tokens,
            eval_per_s=round(stats.eval_tokens / duration, 2) if duration else None,
        ),
        cost=estimate_cost(facts.params.prices, facts.target, limiter.instance_seconds),
        shards=Shards(written=sorted(totals.written), retired_error_shards=facts.retired),
        flow_run_id=flow_run_id,
        failure=policy_violation(
            facts.params,
            totals.succeeded + totals.failed,
            totals.failed,
            totals.input_errors,
            totals.error_kinds,
        ),
    )
