"""Flow ``pipeline``: the whole job as sub-flows — deploy (with its smoke test) → batch → teardown.

``deploy`` runs the smoke test as its own sub-flow inside its transaction, so a service that fails
it after a change is rolled back there. With several ``regions`` the batch's targets are the
service in every region that deployed (the batch shares the prompts in proportion to their
slots), and teardown removes it from all of them. ``teardown`` (when ``teardown`` is true, the
default: the run owns its service) runs even when a step failed. The run's
``pipeline-<service>`` artifact links every sub-flow run and every artifact they made.

``teardown_failed_pipeline`` is what the automation in prefect.yaml runs when a pipeline run ends
Failed or Crashed: it reads that run's parameters and, when the run owned its service, runs the
idempotent ``teardown`` for it, so a crash (where no ``finally`` runs) never leaves a GPU billing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect import flow, get_client, get_run_logger
from prefect.artifacts import acreate_markdown_artifact
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.runtime import flow_run as current_run
from prefect.settings import PREFECT_UI_URL

from flows.batch import batch_inference
from flows.deploy import deploy, is_deployed
from flows.parameters import PipelineParameters
from flows.teardown import teardown
from tasks.batch.manifest import BatchManifest

PIPELINE_FLOW_NAME = "pipeline"


@dataclass(frozen=True)
class SubRun:
    """A sub-flow run of the pipeline (at any depth) and the artifacts it made."""

    depth: int
    flow_run_id: UUID
    name: str
    flow_name: str
    state: str
    artifacts: tuple[tuple[UUID, str, str], ...]  # (id, key or type, description)


def _link(text: str, path: str, ui_url: str | None) -> str:
    return f"[{text}]({ui_url.rstrip('/')}/{path})" if ui_url else text


def summary_markdown(facts: dict[str, Any], sub_runs: list[SubRun], ui_url: str | None) -> str:
    """The pipeline's artifact: the facts, then one row per sub-flow run with links."""
    lines = ["## Pipeline", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {str(v).replace('|', '/')} |" for k, v in facts.items()]
    lines += [
        "",
        "### Sub-flow runs",
        "",
        "| step | run | state | artifacts |",
        "|---|---|---|---|",
    ]
    for run in sub_runs:
        step = "↳ " * run.depth + run.flow_name
        run_link = _link(run.name, f"runs/flow-run/{run.flow_run_id}", ui_url)
        artifacts = ", ".join(
            _link(label, f"artifacts/artifact/{artifact_id}", ui_url)
            for artifact_id, label, _ in run.artifacts
        )
        lines.append(f"| {step} | {run_link} | {run.state} | {artifacts or '—'} |")
    if not sub_runs:
        lines.append("| — | no sub-flow ran | | |")
    return "\n".join(lines) + "\n"


async def collect_sub_runs(parent_id: UUID, depth: int = 0) -> list[SubRun]:
    """Every sub-flow run under ``parent_id``, depth first in start order, with its artifacts."""
    async with get_client() as client:
        children = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])
            ),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        )
        found: list[SubRun] = []
        for child in children:
            flow = await client.read_flow(child.flow_id)
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[child.id]))
            )
            found.append(
                SubRun(
                    depth=depth,
                    flow_run_id=child.id,
                    name=child.name,
                    flow_name=flow.name,
                    state=child.state.name if child.state and child.state.name else "?",
                    artifacts=tuple(
                        (a.id, a.key or a.type or "artifact", a.description or "")
                        for a in artifacts
                    ),
                )
            )
            found += await collect_sub_runs(child.id, depth + 1)
    return found


def format_summary(result: dict[str, Any]) -> str:
    """A few lines for a terminal: where the results are, counts, speed, service and model."""
    batch = result.get("batch") or {}
    counts = batch.get("counts") or {}
    tokens = batch.get("tokens") or {}
    lines = [
        f"service   {result.get('service')} ({result.get('uri')})",
        f"model     {result.get('model')}",
        f"results   {batch.get('output')} (manifest {batch.get('manifest')})",
        "prompts   "
        + ", ".join(f"{k} {counts.get(k, 0)}" for k in ("total", "succeeded", "failed", "skipped")),
        f"tokens/s  {tokens.get('eval_per_s')} ({tokens.get('eval')} tokens out)",
        f"teardown  {result.get('teardown')}",
    ]
    return "\n".join(lines)


@flow(name=PIPELINE_FLOW_NAME)
async def pipeline(params: PipelineParameters) -> dict[str, Any]:
    """Deploy → smoke test → batch → teardown (optional); the summary is also returned."""
    logger = get_run_logger()
    result: dict[str, Any] = {"service": params.service, "model": params.model, "teardown": "kept"}
    try:
        # Sync sub-flows run in a worker thread (the context, so the parent link, is copied).
        deployed = await asyncio.to_thread(deploy, params.deploy_parameters())
        result["uri"] = deployed.get("uri")
        result["revision"] = deployed.get("revision")
        regions = [r for r, done in deployed.get("regions", {}).items() if is_deployed(done)]
        result["regions"] = {r: done["status"] for r, done in deployed.get("regions", {}).items()}
        batch = params.batch_parameters(regions)
        manifest = BatchManifest.model_validate(await batch_inference(batch))
        result["batch"] = {
            "output": manifest.output,
            "manifest": manifest.uri,
            "counts": manifest.counts.model_dump(),
            "tokens": manifest.tokens.model_dump(),
            "model": manifest.model,
            "service": manifest.service.model_dump(),
        }
    finally:
        if params.teardown:
            state = await asyncio.to_thread(
                teardown, params.teardown_parameters(), return_state=True
            )
            result["teardown"] = "done" if state.is_completed() else f"FAILED: {state.message}"
        await _publish_summary(params, result)
    if params.teardown and result["teardown"] != "done":
        raise RuntimeError(f"teardown of {params.service} did not complete: {result['teardown']}")
    logger.info("Pipeline done:\n%s", format_summary(result))
    return result


async def _publish_summary(params: PipelineParameters, result: dict[str, Any]) -> None:
    run_id = current_run.get_id()
    sub_runs = await collect_sub_runs(UUID(run_id)) if run_id else []
    batch = result.get("batch") or {}
    facts = {
        "service": f"{result.get('service')} ({result.get('uri', 'not deployed')})",
        "regions": result.get("regions", ", ".join(params.regions)),
        "model": result.get("model"),
        "input": params.input,
        "results": batch.get("output", "none"),
        "prompts": ", ".join(f"{k} {v}" for k, v in (batch.get("counts") or {}).items()) or "none",
        "tokens/s": (batch.get("tokens") or {}).get("eval_per_s", "n/a"),
        "teardown": result.get("teardown"),
    }
    await acreate_markdown_artifact(
        markdown=summary_markdown(facts, sub_runs, PREFECT_UI_URL.value()),
        key=f"pipeline-{params.service}",
        description=f"Pipeline of {params.service}: sub-flow runs and their artifacts",
    )


@flow(name="teardown-failed-pipeline")
async def teardown_failed_pipeline(pipeline_run_id: UUID) -> dict[str, Any]:
    """Run by the automation when a pipeline run ends Failed or Crashed.

    Tears down only what that run owned (``teardown: true``); a long-lived service is left alone.
    """
    logger = get_run_logger()
    async with get_client() as client:
        run = await client.read_flow_run(pipeline_run_id)
        flow_name = (await client.read_flow(run.flow_id)).name
    if flow_name != PIPELINE_FLOW_NAME:
        raise ValueError(f"flow run {pipeline_run_id} is a {flow_name!r} run, not a pipeline run")
    state_type = run.state.type if run.state else None
    if state_type not in (StateType.FAILED, StateType.CRASHED):
        raise ValueError(
            f"pipeline run {pipeline_run_id} is {state_type}, not Failed or Crashed: "
            "refusing to tear down under a run that may still be using its service"
        )
    params = PipelineParameters.model_validate(run.parameters.get("params") or {})
    outcome: dict[str, Any] = {"pipeline_run": str(pipeline_run_id), "service": params.service}
    if not params.teardown:
        outcome["action"] = "left running (the run did not own its service: teardown=false)"
    else:
        outcome["teardown"] = await asyncio.to_thread(teardown, params.teardown_parameters())
        outcome["action"] = "torn down"
    run_link = _link(
        str(pipeline_run_id), f"runs/flow-run/{pipeline_run_id}", PREFECT_UI_URL.value()
    )
    await acreate_markdown_artifact(
        markdown=f"## Failed pipeline run\n\n| | |\n|---|---|\n"
        f"| pipeline run | {run_link} |\n"
        f"| state | {state_type.value if state_type else '?'} |\n"
        f"| service | {params.service} ({', '.join(params.regions)}) |\n"
        f"| action | {outcome['action']} |\n",
        key=f"teardown-failed-pipeline-{params.service}",
        description="What the automation did after a failed pipeline run",
    )
    logger.info("Failed pipeline %s: %s %s", pipeline_run_id, params.service, outcome["action"])
    return outcome
