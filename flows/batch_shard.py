"""One part of a batch run over several workers: ``batch_inference(params, workers=N)`` runs N
flow runs of this flow through the ``batch-shard`` deployment (prefect.yaml), one per range of
its planned shards. Not meant to be run by hand. Rules: ``tasks.batch.workers``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from tasks.batch.dispatch import run_shards
from tasks.batch.lease import check_held_by
from tasks.batch.ledger import IdLedger
from tasks.batch.params import BatchParams
from tasks.batch.plan import PlanStats, plan_shards
from tasks.batch.steps import connect_targets, list_inputs, scan_existing_output
from tasks.batch.stores import ObjectStore, open_store
from tasks.batch.workers import (
    BeforeRun,
    LeasedShardWriter,
    PartReport,
    ShardPart,
    shards_of_part,
    written_in_range,
)
from tasks.clients import resolve_cloud, storage_client


@flow(
    name="batch-shard",
    description="One range of a batch's shards, run by a worker under the parent run's lease.",
    retries=1,
    retry_delay_seconds=5,
)
async def batch_shard(params: BatchParams, part: ShardPart) -> dict[str, Any]:
    """Send the prompts of shards ``part.first``..``part.last`` of the parent's plan."""
    logger = get_run_logger()
    cloud = resolve_cloud(params.project, params.credentials_block) if params.needs_cloud else None
    gcs = storage_client(cloud) if cloud is not None and params.uses_gcs else None
    store = open_store(params.output, gcs)
    await asyncio.to_thread(check_held_by, store, run=part.run, flow_run_id=part.parent_flow_run_id)
    files = await asyncio.to_thread(list_inputs, params.input, gcs, store.base_uri)
    # The output as the parent planned it: this run's shards hidden, so the plans agree.
    ledger = IdLedger()
    before_run: ObjectStore = BeforeRun(store, part.run)
    await asyncio.to_thread(scan_existing_output, before_run, ledger)
    resumed = await asyncio.to_thread(written_in_range, store, part)  # earlier attempts
    _, engine = await connect_targets(params, cloud)  # params.engine.in_flight: its share
    attempt = flow_run.run_count or 1
    token = part.run if attempt <= 1 else f"{part.run}-r{attempt}"
    logger.info(
        f"part {part.worker} of batch {part.run}: shards {part.first}..{part.last} of "
        f"{part.planned}, in flight {engine.max_limit}, attempt {attempt}; "
        f"{len(resumed.ids)} ids already written by an earlier attempt"
    )
    plan = PlanStats()
    shards = shards_of_part(
        plan_shards(files, ledger, plan, **params.plan_options()), part, resumed.ids
    )
    started_at, sending = time.time(), time.perf_counter()
    try:
        totals = await run_shards(
            shards,
            engine,
            LeasedShardWriter(store, token, part),
            plan,
            shard_size=params.shard_size,
            total_bytes=sum(f.size for f in files),
            progress_interval_seconds=params.progress_interval_seconds,
        )
    finally:
        ledger.close()
    sending = time.perf_counter() - sending
    cpu = time.process_time()  # the whole process: imports, planning and sending
    report = PartReport.of(
        part, flow_run.get_id(), totals, engine, resumed, cpu, (started_at, sending)
    )
    await asyncio.to_thread(report.write, store, part)
    logger.info(f"part {part.worker}: {report.succeeded} succeeded, {report.failed} failed")
    return report.model_dump(mode="json")
