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

from tasks.batch.cost import BilledCost, CostEstimate, estimate_cost, with_per_unit
from tasks.batch.dispatch import RunTotals
from tasks.batch.engine import RequestEngine
from tasks.batch.limiter import LatencyHistogram
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

    @classmethod
    def of(cls, histogram: LatencyHistogram) -> Latency:
        return cls(**{f"p{q}": histogram.quantile(q / 100) for q in (50, 95, 99)})


class TargetReport(BaseModel):
    """One target's part of the run: attempts sent, answered, failed (and of those re-sent),
    its share of the answers, latency, breaker openings and cost."""

    name: str
    uri: str
    service: str | None
    region: str | None
    slots: int
    in_flight: int
    sent: int
    ok: int
    failed: int
    retried: int
    share: float | None  # of this run's answers
    latency_s: Latency
    backoffs: int
    circuit_opens: int
    circuit: str  # its breaker at the end: closed, open or half-open
    instance_seconds: float
    usd: float


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
    targets: list[TargetReport] = []  # every target; ``service`` is the first
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
        await self.publish_summary(artifact_key)

    async def publish_summary(self, artifact_key: str) -> None:
        """The summary table artifact (a new version of ``artifact_key``)."""
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
            ("estimated USD per 1,000 prompts", fmt(self.cost.usd_per_1k_prompts)),
            ("estimated USD per 1M output tokens", fmt(self.cost.usd_per_1m_output_tokens)),
            *billed_rows(self.cost.billed, several=len(self.cost.billed) > 1),
            *[
                (f"billed cost of run {b.run} (now {b.status}, USD)", b.usd)
                for b in self.cost.earlier_runs_billed
            ],
            ("cost assumption", self.cost.assumption),
            ("model", self.model),
            ("service", self.service.name or self.service.uri),
            *((f"target {t.name}", _target_line(t)) for t in self.targets),
            ("manifest", self.uri),
        ]
        return [{"metric": name, "value": str(value)} for name, value in rows]


def _target_line(t: TargetReport) -> str:
    share = "n/a" if t.share is None else f"{t.share:.1%}"
    p50, p95 = (f"{v:.3f} s" if v else "n/a" for v in (t.latency_s.p50, t.latency_s.p95))
    return (
        f"{t.slots} slots: sent {t.sent}, ok {t.ok} ({share}), failed {t.failed} (retried "
        f"{t.retried}), p50 {p50}, p95 {p95}, circuit opened {t.circuit_opens}x "
        f"({t.circuit} at the end), ${t.usd}"
    )


def billed_rows(billed: list[BilledCost], several: bool = False) -> list[tuple[str, Any]]:
    """The billed figures' summary rows (one set per Cloud Run target), status first: final, or
    provisional and when it will be final."""
    if not billed:
        return [("billed cost", "n/a (no Cloud Run service)")]

    def usd(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.6f}"

    rows: list[tuple[str, Any]] = []
    for b in billed:
        of = f" of {b.region}/{b.service}" if several else ""
        status = b.status + (f" (final after {b.final_after})" if b.status == "provisional" else "")
        rows += [
            (f"billed cost status{of}", status),
            (f"billed instance-seconds{of} (Cloud Monitoring)", b.instance_seconds),
            (f"billed cost{of} (USD)", usd(b.usd)),
            (f"billed USD per 1,000 prompts{of}", usd(b.usd_per_1k_prompts)),
            (f"billed USD per 1M output tokens{of}", usd(b.usd_per_1m_output_tokens)),
            (f"billed window{of}", f"{b.window_start} → {b.window_end} (run + idle tail)"),
        ]
    return rows


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
    targets: list[Target]
    output: str
    clock: RunClock
    plan: PlanStats
    totals: RunTotals
    engine: RequestEngine
    retired: list[str]


def build_manifest(facts: RunFacts, flow_run_id: str | None) -> BatchManifest:
    """The manifest of a finished run (counts include what earlier runs did: ``skipped``)."""
    plan, totals, stats, engine = facts.plan, facts.totals, facts.engine.stats, facts.engine
    target = facts.targets[0]
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
            backoffs=engine.backoffs,
            exhausted_ids=plan.exhausted,
            error_kinds=dict(totals.error_kinds.most_common()),
        ),
        model=facts.params.model,
        service=ServiceInfo(
            name=target.service,
            uri=target.uri,
            api=facts.params.engine.api,
            max_instances=target.max_instances,
            concurrency=target.concurrency,
            in_flight=engine.max_limit,
        ),
        input=facts.params.input,
        output=facts.output,
        run=facts.clock.token,
        timings=Timings(
            started_at=facts.clock.started_at.isoformat(),
            finished_at=dt.datetime.now(dt.UTC).isoformat(),
            duration_s=round(duration, 3),
            latency_s=Latency.of(totals.latency),
        ),
        tokens=Tokens(
            prompt=stats.prompt_tokens,
            eval=stats.eval_tokens,
            eval_per_s=round(stats.eval_tokens / duration, 2) if duration else None,
        ),
        cost=with_per_unit(_total_cost(facts), totals.succeeded + totals.failed, stats.eval_tokens),
        shards=Shards(written=sorted(totals.written), retired_error_shards=facts.retired),
        targets=target_reports(facts),
        flow_run_id=flow_run_id,
        failure=policy_violation(
            facts.params,
            totals.succeeded + totals.failed,
            totals.failed,
            totals.input_errors,
            totals.error_kinds,
        ),
    )


def target_reports(facts: RunFacts) -> list[TargetReport]:
    lanes = facts.engine.lanes
    answered = sum(lane.stats.ok for lane in lanes)
    reports = []
    for target, lane in zip(facts.targets, lanes, strict=True):
        stats, limiter = lane.stats, lane.limiter
        cost = estimate_cost(facts.params.prices, target, limiter.instance_seconds)
        reports.append(
            TargetReport(
                name=target.label,
                uri=target.uri,
                service=target.service,
                region=target.region,
                slots=target.slots,
                in_flight=limiter.max_limit,
                sent=stats.sent,
                ok=stats.ok,
                failed=stats.failed,
                retried=stats.retried,
                share=round(stats.ok / answered, 4) if answered else None,
                latency_s=Latency.of(stats.latency),
                backoffs=limiter.decreases,
                circuit_opens=lane.breaker.opens,
                circuit=lane.breaker.state,
                instance_seconds=cost.instance_seconds,
                usd=cost.usd,
            )
        )
    return reports


def _total_cost(facts: RunFacts) -> CostEstimate:
    """The targets' costs summed; the assumption is each target's, named."""
    prices, lanes = facts.params.prices, facts.engine.lanes
    costs = [
        estimate_cost(prices, target, lane.limiter.instance_seconds)
        for target, lane in zip(facts.targets, lanes, strict=True)
    ]
    if len(costs) == 1:
        return costs[0]
    return CostEstimate(
        instance_seconds=round(sum(c.instance_seconds for c in costs), 2),
        usd=round(sum(c.usd for c in costs), 6),
        assumption="; ".join(
            f"{t.label}: {c.assumption}" for t, c in zip(facts.targets, costs, strict=True)
        ),
    )
