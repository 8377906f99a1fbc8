"""`prefect deploy --all` against the session's Prefect server: deployments, schedules, parameter
schemas (the UI's forms), the automation, and the automation firing on a failed pipeline run."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
from prefect import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect.states import Crashed, Failed, Running
from prefect.workers.process import ProcessWorker

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 300


def _ensure_process_pool(api: str) -> None:
    body = {
        "name": "local-process",
        "type": "process",
        "base_job_template": ProcessWorker.get_default_base_job_template(),
    }
    response = httpx.post(f"{api}/work_pools/", json=body, timeout=60)
    assert response.status_code in (201, 409), response.text


async def _read_deployments() -> dict[str, DeploymentResponse]:
    async with get_client() as client:
        deployments = await client.read_deployments()
        flows = {f.id: f.name for f in await client.read_flows()}
    return {f"{flows[d.flow_id]}/{d.name}": d for d in deployments}


@pytest.fixture(scope="module")
def registered(prefect_api: str) -> dict[str, DeploymentResponse]:
    _ensure_process_pool(prefect_api)
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    result = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return asyncio.run(_read_deployments())


def test_every_deployment_is_registered_on_the_local_pool(
    registered: dict[str, DeploymentResponse],
) -> None:
    assert set(registered) >= {
        "deploy/redeploy",
        "batch-inference/nightly-batch",
        "teardown/cleanup-sweep",
        "check/drift-check",
        "pipeline/pipeline",
        "teardown-failed-pipeline/teardown-failed-pipeline",
    }
    for name in registered:
        assert registered[name].work_pool_name == "local-process", name
        assert registered[name].enforce_parameter_schema, name


def test_schedules(registered: dict[str, DeploymentResponse]) -> None:
    def crons(name: str) -> list[tuple[str, str | None, bool]]:
        return [
            (s.schedule.cron, s.schedule.timezone, s.active)  # type: ignore[union-attr]
            for s in registered[name].schedules
        ]

    assert crons("batch-inference/nightly-batch") == [("0 2 * * *", "UTC", True)]
    assert crons("teardown/cleanup-sweep") == [("30 * * * *", "UTC", True)]
    assert crons("check/drift-check") == [("0 6 * * *", "UTC", True)]
    assert registered["deploy/redeploy"].schedules == []
    assert registered["pipeline/pipeline"].schedules == []


def _model_schema(deployment: DeploymentResponse) -> dict[str, Any]:
    """The JSON schema of the one `params` model, as the UI receives it to render the form."""
    schema = deployment.parameter_openapi_schema or {}
    params = schema["properties"]["params"]
    ref = next((part["$ref"] for part in params.get("anyOf", [params]) if "$ref" in part), None)
    assert ref, f"params is not a model: {params}"
    return schema["definitions"][ref.rsplit("/", 1)[-1]]


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("deploy/redeploy", {"model": "string", "max_instances": "integer", "gpu": "integer"}),
        ("batch-inference/nightly-batch", {"input": "string", "output": "string"}),
        ("teardown/cleanup-sweep", {"sweep": "boolean", "idle_hours": "number"}),
        ("pipeline/pipeline", {"input": "string", "teardown": "boolean", "model": "string"}),
    ],
)
def test_parameter_schema_is_a_typed_form(
    registered: dict[str, DeploymentResponse], name: str, fields: dict[str, str]
) -> None:
    model = _model_schema(registered[name])
    for field, kind in fields.items():
        assert model["properties"][field]["type"] == kind, (name, field)
        assert model["properties"][field].get("description"), (name, field)


def test_deployment_parameters_are_stored(registered: dict[str, DeploymentResponse]) -> None:
    batch = registered["batch-inference/nightly-batch"].parameters["params"]
    assert batch["input"].startswith("gs://") and batch["output"].startswith("gs://")
    assert registered["teardown/cleanup-sweep"].parameters["params"]["sweep"] is True


def test_a_wrong_type_is_refused_when_the_run_is_created(
    prefect_api: str, registered: dict[str, DeploymentResponse]
) -> None:
    deployment = registered["deploy/redeploy"]
    response = httpx.post(
        f"{prefect_api}/deployments/{deployment.id}/create_flow_run",
        json={"parameters": {"params": {"max_instances": "seven"}}},
        timeout=60,
    )
    assert response.status_code == 409, response.text
    assert "max_instances" in response.text


def test_the_automation_is_registered(registered: dict[str, DeploymentResponse]) -> None:
    async def read() -> Any:
        async with get_client() as client:
            return await client.read_automations_by_name("teardown-after-failed-pipeline")

    [automation] = asyncio.run(read())
    trigger = automation.trigger
    assert trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert trigger.posture == "Reactive"
    assert automation.enabled
    [action] = automation.actions
    target = registered["teardown-failed-pipeline/teardown-failed-pipeline"]
    assert action.type == "run-deployment"
    assert action.deployment_id == target.id


async def _fail_run(deployment: DeploymentResponse, params: dict[str, Any], crash: bool) -> UUID:
    async with get_client() as client:
        run = await client.create_flow_run_from_deployment(
            deployment.id, parameters={"params": params}
        )
        await client.set_flow_run_state(run.id, Running(), force=True)
        final = Crashed(message="worker lost") if crash else Failed(message="boom")
        await client.set_flow_run_state(run.id, final, force=True)
    return run.id


async def _cleanup_runs(target: DeploymentResponse) -> list[FlowRun]:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async with get_client() as client:
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[target.id]))
        )


def test_a_failed_or_crashed_pipeline_run_triggers_the_teardown_and_a_failed_redeploy_does_not(
    registered: dict[str, DeploymentResponse],
) -> None:
    target = registered["teardown-failed-pipeline/teardown-failed-pipeline"]
    pipeline_params = {"input": "gs://b/prompts/", "output": "gs://b/results/", "teardown": True}
    redeploy_id = asyncio.run(_fail_run(registered["deploy/redeploy"], {}, crash=False))
    failed_id = asyncio.run(_fail_run(registered["pipeline/pipeline"], pipeline_params, False))
    crashed_id = asyncio.run(_fail_run(registered["pipeline/pipeline"], pipeline_params, True))

    deadline = time.monotonic() + 90
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = {
            str(r.parameters.get("pipeline_run_id")) for r in asyncio.run(_cleanup_runs(target))
        }
        if {str(failed_id), str(crashed_id)} <= seen:
            break
        time.sleep(1)
    assert {str(failed_id), str(crashed_id)} <= seen, f"automation did not fire: {seen}"
    assert str(redeploy_id) not in seen
