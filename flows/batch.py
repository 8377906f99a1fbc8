"""Batch inference: prompts in Cloud Storage (or local files) → an Ollama service → results.

``batch_inference(params)`` checks the output and takes its lease (``tasks.batch.lease``) before
any prompt is sent, plans the input into shards of prompts still to do (ids done earlier are
skipped), runs them in a few shard-level tasks (each writes its own result and error shard),
reconciles (retires superseded error shards) and reports: ``manifest.json`` (with the billed
cost of a Cloud Run service, ``tasks.batch.billing``), a summary artifact and the returned
manifest. Exactly-once rule and layout: ``tasks.batch.outputs``. From a shell:
``ollama-cloudrun batch --input ... --output ...``.

With ``workers=N`` (N > 1) the planned shards are split into N ranges, each run as a flow run of
the ``batch-shard`` deployment (``flows.batch_shard``) on its work pool's workers, under this
run's lease; their reports are merged into one manifest (``tasks.batch.workers``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.parameters import Workers
from tasks import cloud_run
from tasks.batch.billing import attach_billed, await_final_billed
from tasks.batch.dispatch import run_shards
from tasks.batch.lease import OutputLease
from tasks.batch.ledger import IdLedger
from tasks.batch.manifest import BatchManifest, RunClock, RunFacts, build_manifest
from tasks.batch.outputs import ShardWriter
from tasks.batch.params import BatchParams
from tasks.batch.plan import PlanStats, plan_shards
from tasks.batch.results import counts_dict, write_results
from tasks.batch.steps import (
    check_output,
    connect_targets,
    list_inputs,
    retire_errors,
    scan_existing_output,
)
from tasks.batch.stores import ObjectStore, open_store
from tasks.batch.target import Target
from tasks.batch.workers import (
    check_child_deployment,
    child_rows,
    count_planned,
    merge_reports,
    publish_with_children,
    read_reports,
    run_parts,
    share_of,
    split_parts,
)
from tasks.clients import GoogleCloud, resolve_cloud, storage_client
from tasks.errors import BatchFailedError

SUMMARY_KEY = "batch-inference-summary"


@flow(
    name="batch-inference", description="Prompts in Cloud Storage → Ollama on Cloud Run → results."
)
async def batch_inference(params: BatchParams, workers: Workers = 1) -> dict[str, Any]:
    """Prompts in Cloud Storage (or local files) → an Ollama service → results, exactly once;
    ``workers`` > 1: the shards split over that many flow runs of ``batch-shard``."""
    clock = RunClock.start()
    if workers > 1:  # before the lease: a missing deployment or pool costs nothing
        await check_child_deployment(workers)

    # The output first (no overlap with the input, writable, leased), then target and input.
    cloud = resolve_cloud(params.project, params.credentials_block) if params.needs_cloud else None
    gcs = storage_client(cloud) if cloud is not None and params.uses_gcs else None
    store = open_store(params.output, gcs)
    await asyncio.to_thread(check_output, params.input, store, clock.token)
    lease = OutputLease(store, run=clock.token, flow_run_id=flow_run.get_id(), params=params)
    await asyncio.to_thread(lease.acquire)
    try:
        if workers > 1:
            manifest = await _run_on_workers(params, workers, store, cloud, gcs, clock)
        else:
            manifest = await _run(params, store, cloud, gcs, clock)
    finally:
        await asyncio.to_thread(lease.release)
    if params.prices.await_billed and cloud is not None:  # the lease is free meanwhile
        await await_final_billed(cloud, store, manifest, SUMMARY_KEY)
    return manifest.model_dump(mode="json")


async def _run(
    params: BatchParams, store: ObjectStore, cloud: GoogleCloud | None, gcs: Any, clock: RunClock
) -> BatchManifest:
    """Under the output's lease: plan, run the shards, reconcile, report."""
    logger = get_run_logger()
    targets, engine = await connect_targets(params, cloud)
    await _record_uses(targets, cloud)
    files = await asyncio.to_thread(list_inputs, params.input, gcs, store.base_uri)
    total_bytes = sum(f.size for f in files)
    scan = await asyncio.to_thread(scan_existing_output, store, ledger := IdLedger())
    via = ", ".join(f"{t.label} ({t.service or 'url'}, {t.slots} slots)" for t in targets)
    logger.info(
        f"batch {clock.token}: {len(files)} input file(s), {total_bytes} bytes → {store.base_uri} "
        f"via {via}, in flight {engine.max_limit}; output holds "
        f"{scan.succeeded} results and {scan.failed} failed ids"
    )

    # Plan, and run the shards as they are planned.
    plan = PlanStats()
    shards = plan_shards(files, ledger, plan, **params.plan_options())
    totals = await run_shards(
        shards,
        engine,
        ShardWriter(store, clock.token),
        plan,
        shard_size=params.shard_size,
        total_bytes=total_bytes,
        progress_interval_seconds=params.progress_interval_seconds,
    )

    # Reconcile: error shards whose every record now has a newer outcome go.
    retired = await asyncio.to_thread(retire_errors, store, scan.error_shards, ledger)
    ledger.close()

    facts = RunFacts(params, targets, store.base_uri, clock, plan, totals, engine, retired)
    return await _report(params, store, cloud, gcs, facts)


async def _run_on_workers(
    params: BatchParams,
    workers: int,
    store: ObjectStore,
    cloud: GoogleCloud | None,
    gcs: Any,
    clock: RunClock,
) -> BatchManifest:
    """Under the output's lease: plan, split the shards over child flow runs, wait, merge."""
    targets, engine = await connect_targets(params, cloud)  # the children send, not this run
    await engine.aclose()
    await _record_uses(targets, cloud)
    files = await asyncio.to_thread(list_inputs, params.input, gcs, store.base_uri)
    scan = await asyncio.to_thread(scan_existing_output, store, ledger := IdLedger())
    plan = PlanStats()
    planned = await asyncio.to_thread(
        count_planned, plan_shards(files, ledger, plan, **params.plan_options())
    )
    parts = split_parts(planned, workers, run=clock.token, parent=flow_run.get_id())
    get_run_logger().info(f"batch {clock.token}: {planned} shards over {len(parts)} workers")
    runs = await run_parts(params, parts, share_of(engine.max_limit, len(parts)))

    # Merge (every part completed: run_parts raises otherwise), reconcile, report.
    reports = await asyncio.to_thread(read_reports, store, parts)
    totals, merged = merge_reports(reports)
    retired = await asyncio.to_thread(retire_errors, store, scan.error_shards, ledger)
    ledger.close()
    facts = RunFacts(params, targets, store.base_uri, clock, plan, totals, merged, retired)
    return await _report(params, store, cloud, gcs, facts, child_rows(runs, reports))


async def _record_uses(targets: list[Target], cloud: GoogleCloud | None) -> None:
    """A batch is a use of each service it sends to (tasks/idle.py)."""
    for target in targets:
        if cloud is not None and target.service and target.region:
            name = cloud_run.service_name(cloud.project, target.region, target.service)
            await asyncio.to_thread(cloud_run.record_service_use.fn, cloud, name)


async def _report(
    params: BatchParams,
    store: ObjectStore,
    cloud: GoogleCloud | None,
    gcs: Any,
    facts: RunFacts,
    children: list[dict[str, str]] | None = None,
) -> BatchManifest:
    """The manifest and summary artifact first (a run the failure policy fails has written
    everything), the collected answer set if asked, then the failure policy."""
    logger, token = get_run_logger(), facts.clock.token
    manifest = build_manifest(facts, flow_run.get_id())
    await attach_billed(manifest, cloud, store, facts.targets, params.prices)
    if children is None:
        await manifest.publish(store, SUMMARY_KEY)  # manifest.json and the summary artifact
    else:  # the same, with a row linking each child flow run
        await publish_with_children(manifest, store, SUMMARY_KEY, children)
    counts = manifest.counts
    logger.info(
        f"batch {token} done in {manifest.timings.duration_s:.1f} s: {counts.succeeded} "
        f"succeeded, {counts.failed} failed, {counts.skipped} skipped; manifest {manifest.uri}"
    )
    if params.collect:  # the final answer set, one record per input id (tasks.batch.results)
        collected = await asyncio.to_thread(
            write_results, store.base_uri, format=params.output_format, storage_client=gcs
        )
        logger.info(f"final answer set: {counts_dict(collected)}")
    if manifest.failure:  # everything is written; the run still ends Failed (failure policy)
        raise BatchFailedError(f"batch {token}: {manifest.failure}; manifest {manifest.uri}")
    return manifest
