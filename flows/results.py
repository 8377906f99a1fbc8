"""Flow ``collect_results``: the final answer set of a batch output in one JSONL file.

Exactly one record per input id (the reconciliation rule of ``tasks.batch.outputs``), optionally
in input order, written to ``<output>/final/results.jsonl`` or ``to``; returns the counts. From a
shell: ``ollama-cloudrun results OUTPUT [--format native|openai] [--to PATH|gs://...]
[--order input]``. In a notebook:
``tasks.batch.results.iter_results(output)``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import flow, get_run_logger

from flows.parameters import ResultsParams
from tasks.batch.results import counts_dict, write_results
from tasks.clients import resolve_cloud, storage_client


@flow(name="collect-results", description="One record per input id from a batch output.")
async def collect_results(params: ResultsParams) -> dict[str, Any]:
    """Write the final answer set of a batch output (one record per input id) and count it."""
    gcs = None
    if params.uses_gcs:
        gcs = storage_client(resolve_cloud(params.project, params.credentials_block))
    counts = await asyncio.to_thread(
        write_results,
        params.output,
        params.to,
        format=params.format,
        order=params.order,
        storage_client=gcs,
    )
    get_run_logger().info(
        f"{counts.records} records ({counts.succeeded} succeeded, {counts.failed} failed, "
        f"{counts.input_errors} input errors) → {counts.to} ({counts.format} format)"
    )
    return counts_dict(counts)
