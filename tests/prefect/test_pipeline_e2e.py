"""The pipeline end to end on emulator.gcp (sim engine), and the automation's teardown flow."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any
from uuid import UUID

import pytest
from google.api_core import exceptions as gexc
from google.cloud import run_v2
from prefect import get_client
from prefect.artifacts import Artifact
from prefect.client.schemas.objects import StateType
from prefect.states import Crashed, Failed, Running, State

from flows.deploy import DeployParameters, deploy
from flows.pipeline import (
    PipelineParameters,
    format_summary,
    pipeline,
    teardown_failed_pipeline,
)
from tasks import clients

PROMPTS = 12


def _service(service_id: str) -> run_v2.Service:
    cloud = clients.resolve_cloud()
    client = clients.run_services_client(cloud)
    return client.get_service(name=client.service_path(cloud.project, "us-central1", service_id))


def _bucket_with_prompts() -> str:
    cloud = clients.resolve_cloud()
    bucket = clients.storage_client(cloud).create_bucket(f"prompts-{uuid.uuid4().hex[:8]}")
    lines = [json.dumps({"id": f"p{i}", "prompt": f"Say {i}."}) for i in range(PROMPTS)]
    bucket.blob("prompts/a.jsonl").upload_from_string("\n".join(lines) + "\n")
    return str(bucket.name)


@pytest.fixture
def service_id() -> str:
    return f"ollama-{uuid.uuid4().hex[:8]}"


@pytest.mark.slow
def test_pipeline_deploys_batches_tears_down_and_links_every_sub_flow(
    gcp_env: dict[str, str], prefect_api: str, service_id: str
) -> None:
    bucket = _bucket_with_prompts()
    params = PipelineParameters.model_validate(
        {
            "service": service_id,
            "input": f"gs://{bucket}/prompts/",
            "output": f"gs://{bucket}/results/",
        }
    )
    result = asyncio.run(pipeline(params))

    counts = result["batch"]["counts"]
    assert (counts["total"], counts["succeeded"], counts["failed"]) == (PROMPTS, PROMPTS, 0)
    assert result["batch"]["service"]["name"] == service_id
    assert result["teardown"] == "done"
    with pytest.raises(gexc.NotFound):
        _service(service_id)
    objects = [b.name for b in clients.storage_client(clients.resolve_cloud()).list_blobs(bucket)]
    assert "results/manifest.json" in objects

    summary = format_summary(result)
    assert f"gs://{bucket}/results" in summary and f"succeeded {PROMPTS}" in summary

    artifact = Artifact.get(f"pipeline-{service_id}")
    assert artifact is not None
    markdown = str(artifact.data)
    for flow_name in ("deploy", "smoke_test", "batch-inference", "teardown"):
        assert f"| {flow_name} |" in markdown or f"↳ {flow_name} |" in markdown, flow_name
    assert markdown.count("/runs/flow-run/") >= 4
    assert "/artifacts/artifact/" in markdown


@pytest.mark.slow
def test_a_failing_pipeline_still_tears_down_what_it_owned(
    gcp_env: dict[str, str], prefect_api: str, service_id: str
) -> None:
    params = PipelineParameters.model_validate(
        {
            "service": service_id,
            "input": f"gs://no-such-bucket-{uuid.uuid4().hex[:8]}/prompts/",
            "output": f"gs://no-such-bucket-{uuid.uuid4().hex[:8]}/results/",
        }
    )
    state = asyncio.run(pipeline(params, return_state=True))  # type: ignore[call-overload]
    assert state.is_failed()
    with pytest.raises(gexc.NotFound):
        _service(service_id)
    artifact = Artifact.get(f"pipeline-{service_id}")
    assert artifact is not None and "| teardown | done |" in str(artifact.data)


async def _pipeline_run(params: dict[str, Any], state: State[Any]) -> UUID:
    """A pipeline flow run record in ``state``, as a crashed worker would leave it."""
    async with get_client() as client:
        run = await client.create_flow_run(pipeline, parameters={"params": params})
        await client.set_flow_run_state(run.id, Running(), force=True)
        await client.set_flow_run_state(run.id, state, force=True)
        return run.id


def test_teardown_failed_pipeline_leaves_a_long_lived_service_alone(prefect_api: str) -> None:
    params = {"input": "gs://b/p/", "output": "gs://b/r/", "teardown": False}
    run_id = asyncio.run(_pipeline_run(params, Failed()))
    outcome = asyncio.run(teardown_failed_pipeline(run_id))
    assert outcome["action"].startswith("left running")
    assert "teardown" not in outcome


def test_teardown_failed_pipeline_refuses_a_run_that_is_not_failed(prefect_api: str) -> None:
    params = {"input": "gs://b/p/", "output": "gs://b/r/", "teardown": True}
    run_id = asyncio.run(_pipeline_run(params, Running()))
    state = asyncio.run(teardown_failed_pipeline(run_id, return_state=True))  # type: ignore[call-overload]
    assert state.type == StateType.FAILED
    with pytest.raises(ValueError, match="not Failed or Crashed"):
        state.result()


@pytest.mark.slow
def test_teardown_failed_pipeline_removes_the_service_of_a_crashed_run(
    gcp_env: dict[str, str], prefect_api: str, service_id: str
) -> None:
    deploy(DeployParameters.model_validate({"service": service_id, "run_smoke_test": False}))
    assert _service(service_id).uri
    params = {"service": service_id, "input": "gs://b/p/", "output": "gs://b/r/"}
    run_id = asyncio.run(_pipeline_run(params, Crashed(message="worker lost")))

    outcome = asyncio.run(teardown_failed_pipeline(run_id))

    assert outcome["action"] == "torn down"
    assert {r["kind"]: r["result"] for r in outcome["teardown"]}["service"] == "deleted"
    with pytest.raises(gexc.NotFound):
        _service(service_id)
