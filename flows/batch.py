"""Batch inference: prompts in Cloud Storage (or local files) → an Ollama service → results.

``batch_inference(params)`` streams the input, skips every id the output already holds, sends the
rest through one async client in a few shard-level tasks (each writes its own result and error
shard as soon as it is done), and ends with ``manifest.json``, a summary table artifact and the
returned summary. The exactly-once rule and the output layout: ``tasks.batch.outputs``.

    python -m flows.batch '{"input": "gs://b/prompts/*.jsonl", "output": "gs://b/out/"}'
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import secrets
import sys
import time
from typing import Any, cast

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_table_artifact
from prefect.context import get_run_context
from prefect.utilities.annotations import quote

from flows.parameters import BatchParams
from tasks.batch.ledger import IdLedger
from tasks.batch.outputs import ShardWriter, write_manifest
from tasks.batch.progress import ProgressReporter
from tasks.batch.steps import (
    PlanStats,
    RunTotals,
    Shard,
    ShardResult,
    build_engine,
    list_inputs,
    plan_shards,
    process_shard,
    resolve_target,
    retire_errors,
    scan_existing_output,
)
from tasks.batch.stores import open_store
from tasks.batch.target import Target, is_url
from tasks.clients import GoogleCloud, resolve_cloud, storage_client
from tasks.id_tokens import GoogleIdTokenAuth

SUMMARY_KEY = "batch-inference-summary"
PROGRESS_KEY = "batch-inference-progress"


def _uses_id_token(params: BatchParams) -> bool:
    if params.id_token != "auto":
        return params.id_token == "always"
    if not is_url(params.target):
        return True
    host = params.target.split("://", 1)[1].split("/", 1)[0].split(":", 1)[0]
    return host.endswith(".run.app")


def _cost(params: BatchParams, target: Target, instance_seconds: float) -> tuple[float, str]:
    gpu_price = (
        params.l4_zonal_redundancy_usd_per_second
        if target.gpu_zonal_redundancy
        else params.l4_usd_per_second
    )
    per_second = (
        target.gpus * gpu_price
        + target.cpu * params.vcpu_usd_per_second
        + target.memory_gib * params.memory_gib_usd_per_second
    )
    if target.service is None:
        per_second = 0.0
    assumption = (
        f"instance-seconds (lower bound: busy instances = ceil(in flight / {target.concurrency}), "
        f"at most {target.max_instances}; idle instances kept warm are not counted) × "
        f"${per_second:.7f}/s per instance = {target.gpus} × L4 ${gpu_price}/s "
        f"({'with' if target.gpu_zonal_redundancy else 'without'} zonal redundancy) + "
        f"{target.cpu:g} vCPU × ${params.vcpu_usd_per_second}/s + {target.memory_gib:g} GiB × "
        f"${params.memory_gib_usd_per_second}/s; us-central1 list prices seen for 2026 (secondary "
        "sources), an assumption"
        + ("" if target.service else "; target is a plain URL, so no Cloud Run cost")
    )
    return instance_seconds * per_second, assumption


@flow(
    name="batch-inference", description="Prompts in Cloud Storage → Ollama on Cloud Run → results."
)
async def batch_inference(params: BatchParams) -> dict[str, Any]:
    logger = get_run_logger()
    started_wall = dt.datetime.now(dt.UTC)
    started = time.monotonic()
    run_token = started_wall.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)
    needs_cloud = (
        params.input.startswith("gs://")
        or params.output.startswith("gs://")
        or not is_url(params.target)
    )
    cloud: GoogleCloud | None = (
        resolve_cloud(params.project, params.credentials_block) if needs_cloud else None
    )
    gcs = (
        storage_client(cloud)
        if cloud is not None
        and (params.input.startswith("gs://") or params.output.startswith("gs://"))
        else None
    )
    target = await asyncio.to_thread(
        resolve_target, params.target, cloud, params.region, params.in_flight or 4
    )
    in_flight = params.in_flight or target.slots
    output_store = open_store(params.output, gcs)
    files = await asyncio.to_thread(list_inputs, params.input, gcs, output_store.base_uri)
    total_bytes = sum(f.size for f in files)
    ledger = IdLedger()
    scan = await asyncio.to_thread(scan_existing_output, output_store, ledger)
    logger.info(
        "batch %s: %d input file(s), %d bytes → %s via %s (%s, in flight %d); output holds %d "
        "results and %d failed ids",
        run_token,
        len(files),
        total_bytes,
        output_store.base_uri,
        target.uri,
        target.service or "url",
        in_flight,
        scan.succeeded,
        scan.failed,
    )
    id_tokens = GoogleIdTokenAuth(target.uri) if _uses_id_token(params) else None
    engine = build_engine(
        target,
        api=params.api,
        model=params.model,
        in_flight=in_flight,
        id_tokens=id_tokens,
        stream=params.stream,
        max_retries=params.max_retries,
        request_timeout_seconds=params.request_timeout_seconds,
        backoff_initial_seconds=params.backoff_initial_seconds,
        backoff_max_seconds=params.backoff_max_seconds,
    )
    writer = ShardWriter(output_store, run_token)
    plan = PlanStats()
    shards = plan_shards(
        files,
        ledger,
        plan,
        shard_size=params.shard_size,
        retry_errors=params.retry_errors,
        max_line_bytes=params.max_line_bytes,
    )
    progress = ProgressReporter(
        total_bytes, artifact_interval_seconds=params.progress_interval_seconds, key=PROGRESS_KEY
    )
    totals = RunTotals()

    def done_bytes() -> int:
        return plan.skipped_bytes + engine.stats.done_bytes + totals.problem_bytes

    def status() -> str:
        s = engine.stats
        return (
            f"{s.succeeded} ok, {s.failed} failed, "
            f"{plan.skipped_ok + plan.skipped_failed} skipped, "
            f"{s.retries} retries, in flight {engine.limiter.in_flight}/{engine.limiter.limit}"
        )

    async def tick() -> None:
        while True:
            await asyncio.sleep(0.5)
            await progress.update(done_bytes(), status())

    # Enough shards at once that one shard's tail never leaves slots idle.
    max_active = 1 + math.ceil(in_flight / params.shard_size)
    await progress.start()
    ticker = asyncio.create_task(tick())
    active: set[asyncio.Task[ShardResult]] = set()
    try:
        while True:
            shard = await asyncio.to_thread(next, shards, None)
            if shard is None:
                break
            active.add(
                asyncio.create_task(
                    process_shard(shard.seq, cast(Shard, quote(shard)), engine, writer)
                )
            )
            while len(active) >= max_active:
                finished, still = await asyncio.wait(active, return_when=asyncio.FIRST_COMPLETED)
                active = set(still)
                for done in finished:
                    totals.add(done.result())
        for next_done in asyncio.as_completed(active):
            totals.add(await next_done)
        active = set()
    finally:
        for pending in active:
            pending.cancel()
        ticker.cancel()
        await engine.aclose()
        progress.stop()
    await progress.update(done_bytes(), status(), force=True)
    retired = await asyncio.to_thread(retire_errors, output_store, scan.error_shards, ledger)
    ledger.close()

    duration = time.monotonic() - started
    stats = engine.stats
    latency = totals.latency
    new_ok = totals.succeeded
    new_failed = totals.failed + totals.input_errors
    cost, assumption = _cost(params, target, engine.limiter.instance_seconds)
    counts = {
        "total": new_ok + new_failed + plan.skipped_ok + plan.skipped_failed,
        "succeeded": new_ok + plan.skipped_ok,
        "failed": new_failed + plan.skipped_failed,
        "skipped": plan.skipped_ok + plan.skipped_failed,
    }
    quantiles = {f"p{q}": latency.quantile(q / 100) for q in (50, 95, 99)}
    manifest: dict[str, Any] = {
        "counts": counts,
        "this_run": {
            "sent": new_ok + totals.failed,
            "succeeded": new_ok,
            "failed": new_failed,
            "input_errors": totals.input_errors,
            "skipped_succeeded": plan.skipped_ok,
            "skipped_failed": plan.skipped_failed,
            "retried_errors": plan.retried_errors,
            "duplicate_ids": plan.duplicates,
            "blank_lines": plan.blank,
            "retries": stats.retries,
            "backoffs": engine.limiter.decreases,
        },
        "model": params.model,
        "service": {
            "name": target.service,
            "uri": target.uri,
            "api": params.api,
            "max_instances": target.max_instances,
            "concurrency": target.concurrency,
            "in_flight": in_flight,
        },
        "input": params.input,
        "output": output_store.base_uri,
        "run": run_token,
        "timings": {
            "started_at": started_wall.isoformat(),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(),
            "duration_s": round(duration, 3),
            "latency_s": quantiles,
        },
        "tokens": {
            "prompt": stats.prompt_tokens,
            "eval": stats.eval_tokens,
            "eval_per_s": round(stats.eval_tokens / duration, 2) if duration else None,
        },
        "cost": {
            "instance_seconds": round(engine.limiter.instance_seconds, 2),
            "usd": round(cost, 6),
            "assumption": assumption,
        },
        "shards": {
            "written": sorted(totals.written),
            "retired_error_shards": retired,
        },
        "reconciliation": "one record per id: its result if any, else its newest error record "
        "(see tasks/batch/outputs.py)",
    }
    with _flow_run_id() as flow_run_id:
        manifest["flow_run_id"] = flow_run_id
    manifest["uri"] = await asyncio.to_thread(write_manifest, output_store, manifest)
    await acreate_table_artifact(
        key=SUMMARY_KEY,
        table=_summary_rows(manifest),
        description=f"Batch inference summary. Cost assumption: {assumption}.",
    )
    logger.info(
        "batch %s done in %.1f s: %d succeeded, %d failed, %d skipped; manifest %s",
        run_token,
        duration,
        counts["succeeded"],
        counts["failed"],
        counts["skipped"],
        manifest["uri"],
    )
    return manifest


class _flow_run_id:
    def __enter__(self) -> str | None:
        try:
            run = get_run_context().flow_run  # type: ignore[union-attr]
        except Exception:
            return None
        return str(run.id) if run else None

    def __exit__(self, *exc: object) -> None:
        return None


def _summary_rows(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    def fmt(value: float | None, unit: str = "") -> str:
        return "n/a" if value is None else f"{value:.3f}{unit}"

    counts, tokens, timings = manifest["counts"], manifest["tokens"], manifest["timings"]
    latency = timings["latency_s"]
    rows = [
        ("total", counts["total"]),
        ("succeeded", counts["succeeded"]),
        ("failed", counts["failed"]),
        ("skipped (done by earlier runs)", counts["skipped"]),
        ("tokens in", tokens["prompt"]),
        ("tokens out", tokens["eval"]),
        ("tokens out / s", tokens["eval_per_s"]),
        ("latency p50", fmt(latency["p50"], " s")),
        ("latency p95", fmt(latency["p95"], " s")),
        ("latency p99", fmt(latency["p99"], " s")),
        ("duration", f"{timings['duration_s']} s"),
        ("retries", manifest["this_run"]["retries"]),
        ("instance-seconds", manifest["cost"]["instance_seconds"]),
        ("estimated GPU cost (USD)", manifest["cost"]["usd"]),
        ("cost assumption", manifest["cost"]["assumption"]),
        ("model", manifest["model"]),
        ("service", manifest["service"]["name"] or manifest["service"]["uri"]),
        ("manifest", manifest["uri"]),
    ]
    return [{"metric": name, "value": str(value)} for name, value in rows]


def main(argv: list[str]) -> int:
    """``python -m flows.batch PARAMS_JSON`` (or ``@file.json``)."""
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    text = argv[0]
    if text.startswith("@"):
        with open(text[1:], encoding="utf-8") as handle:
            text = handle.read()
    params = BatchParams.model_validate(json.loads(text))
    manifest = asyncio.run(batch_inference(params))
    print(json.dumps(manifest["counts"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
