"""The batch's Prefect tasks: each one I/O step. Prompts are sent inside ``process_shard`` — a few
shard-level tasks, never one task per prompt (per-task overhead is ~30 ms on the server)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from google.api_core import exceptions as gexc
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.batch.engine import (
    AdaptiveLimiter,
    Backend,
    LatencyHistogram,
    OllamaBackend,
    OpenAIBackend,
    RequestEngine,
)
from tasks.batch.inputs import InputFile, iter_lines, parse_line, resolve_inputs
from tasks.batch.ledger import PRIOR_FAILED, PRIOR_OK, RETRIED, SEEN, THIS_RUN, IdLedger
from tasks.batch.outputs import OutputScan, ShardWriter, retire_superseded_errors, scan_output
from tasks.batch.preflight import check_no_overlap, probe_output
from tasks.batch.records import InputProblem, PromptRequest, error_record
from tasks.batch.stores import ObjectInfo, ObjectStore
from tasks.batch.target import Target, is_url, lookup_service, url_target
from tasks.clients import GoogleCloud
from tasks.id_tokens import GoogleIdTokenAuth

CONNECT_TIMEOUT_SECONDS = 10.0
_GOOGLE_TRANSIENT = (gexc.TooManyRequests, gexc.ServiceUnavailable, gexc.InternalServerError)


def _retry_google(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except _GOOGLE_TRANSIENT:
        return True
    except Exception:
        return False
    return False


@task(
    name="resolve-target",
    retries=3,
    retry_delay_seconds=[1, 2, 4],
    retry_condition_fn=_retry_google,
)
def resolve_target(
    target: str, cloud: GoogleCloud | None, region: str, default_concurrency: int
) -> Target:
    """A URL as is; a Cloud Run service name → its uri, max instances and concurrency."""
    if is_url(target):
        return url_target(target, default_concurrency)
    if cloud is None:
        raise ValueError("a Cloud Run target needs Google Cloud credentials")
    return lookup_service(cloud, region, target)


@task(
    name="check-output",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_retry_google,
)
def check_output(input_spec: str, store: ObjectStore, run_token: str) -> None:
    """Before any prompt: the output does not overlap the input, and objects can be created
    (and deleted) under it — so an unusable output costs no inference."""
    check_no_overlap(input_spec, store.base_uri)
    probe_output(store, run_token)


@task(
    name="list-inputs",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_retry_google,
)
def list_inputs(spec: str, storage_client: Any, exclude: str) -> list[InputFile]:
    return resolve_inputs(spec, storage_client, exclude=exclude)


@task(
    name="scan-output",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_retry_google,
)
def scan_existing_output(store: ObjectStore, ledger: IdLedger) -> OutputScan:
    """Read what earlier runs wrote, so this run skips it (exactly once, resumable)."""
    return scan_output(store, ledger)


@dataclass
class Shard:
    seq: int
    requests: list[PromptRequest] = field(default_factory=list)
    problems: list[InputProblem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.requests) + len(self.problems)


@dataclass
class PlanStats:
    lines: int = 0
    blank: int = 0
    duplicates: int = 0
    skipped_ok: int = 0
    skipped_failed: int = 0
    retried_errors: int = 0
    skipped_bytes: int = 0  # lines done by earlier runs, or blank


def plan_shards(
    files: list[InputFile],
    ledger: IdLedger,
    stats: PlanStats,
    *,
    shard_size: int,
    retry_errors: bool,
    max_line_bytes: int,
) -> Iterator[Shard]:
    """Stream the input into shards of at most ``shard_size`` items still to do."""
    shard = Shard(1)

    def admit(item: PromptRequest | InputProblem) -> bool:
        before = ledger.add(item.id, SEEN)
        if before & PRIOR_OK:
            stats.skipped_ok += 1
        elif before & PRIOR_FAILED and not retry_errors:
            stats.skipped_failed += 1
        else:
            if before & PRIOR_FAILED:
                ledger.add(item.id, RETRIED)
                stats.retried_errors += 1
            ledger.note_place(item.file, item.line, THIS_RUN)  # outputs.py, rule 1
            return True
        stats.skipped_bytes += item.size
        return False

    for file in files:
        with file.store.open_read(file.name) as stream:
            for line, raw, size in iter_lines(stream, max_line_bytes):
                stats.lines += 1
                item = parse_line(file, line, raw, size, max_line_bytes)
                if item is None:
                    stats.blank += 1
                    stats.skipped_bytes += size
                    continue
                if ledger.state(item.id) & SEEN:
                    stats.duplicates += 1
                    item = InputProblem(
                        f"{file.key}:{line}",
                        file.uri,
                        line,
                        size,
                        f"duplicate id {item.id!r}: an earlier line already has it",
                    )
                    if ledger.state(item.id) & SEEN:  # the derived id itself was given earlier
                        item = InputProblem(f"{file.uri}:{line}", file.uri, line, size, item.reason)
                if not admit(item):
                    continue
                if isinstance(item, InputProblem):
                    shard.problems.append(item)
                else:
                    shard.requests.append(item)
                if len(shard) >= shard_size:
                    yield shard
                    shard = Shard(shard.seq + 1)
    if len(shard):
        yield shard


@dataclass
class ShardResult:
    seq: int
    succeeded: int
    failed: int
    input_errors: int
    problem_bytes: int
    written: list[str]
    latency: LatencyHistogram


@dataclass
class RunTotals:
    """The finished shards folded as they come, so a run of any length holds one of these."""

    succeeded: int = 0
    failed: int = 0
    input_errors: int = 0
    problem_bytes: int = 0
    written: list[str] = field(default_factory=list)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def add(self, shard: ShardResult) -> None:
        self.succeeded += shard.succeeded
        self.failed += shard.failed
        self.input_errors += shard.input_errors
        self.problem_bytes += shard.problem_bytes
        self.written += shard.written
        self.latency.merge(shard.latency)


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
    )


@task(
    name="retire-superseded-errors",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_retry_google,
)
def retire_errors(
    store: ObjectStore, prior_error_shards: list[ObjectInfo], ledger: IdLedger
) -> list[str]:
    return retire_superseded_errors(store, prior_error_shards, ledger)


def build_engine(
    target: Target,
    *,
    api: str,
    model: str,
    in_flight: int,
    id_tokens: GoogleIdTokenAuth | None,
    stream: bool,
    max_retries: int,
    request_timeout_seconds: float,
    backoff_initial_seconds: float,
    backoff_max_seconds: float,
) -> RequestEngine:
    backend: Backend
    if api == "openai":
        backend = OpenAIBackend(
            target.uri + "/v1",
            model,
            api_key=os.environ.get("OPENAI_API_KEY") or "unused",
            timeout=httpx.Timeout(
                CONNECT_TIMEOUT_SECONDS,
                read=request_timeout_seconds,
                write=60.0,
                pool=request_timeout_seconds,
            ),
            auth=id_tokens,
            max_connections=in_flight,
        )
    else:
        backend = OllamaBackend(
            target.uri,
            model,
            connect_timeout_seconds=CONNECT_TIMEOUT_SECONDS,
            read_timeout_seconds=request_timeout_seconds,
            tokens=id_tokens,
            max_connections=in_flight,
            stream=stream,
        )
    limiter = AdaptiveLimiter(
        in_flight, concurrency=target.concurrency, max_instances=target.max_instances
    )
    return RequestEngine(
        backend,
        limiter,
        max_retries=max_retries,
        backoff_initial_seconds=backoff_initial_seconds,
        backoff_max_seconds=backoff_max_seconds,
        attempt_timeout_seconds=request_timeout_seconds,
    )
