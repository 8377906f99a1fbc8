"""The plan (issue 13, item 1): per-resource changes, Cloud Run's validate_only, no side effects
(the emulator's request log: GETs and validateOnly calls only), and a deploy that waits for an
approval given through Prefect's run input."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from uuid import UUID

import httpx
import pytest
from google.cloud import run_v2
from prefect import get_client
from prefect.artifacts import Artifact
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState
from prefect.client.schemas.filters import FlowRunFilterStateType as StateTypeFilter
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import resume_flow_run

from flows.deploy import deploy
from flows.parameters import DeployParameters
from flows.plan import NO_CHANGES, plan
from tasks import clients
from tests.flows.conftest import EmulatorControl

pytestmark = pytest.mark.slow


def _log(emulator: EmulatorControl, since: int = 0) -> list[dict[str, Any]]:
    response = httpx.get(f"{emulator.base_url}/_emulator/requests?since={since}", timeout=30)
    response.raise_for_status()
    entries: list[dict[str, Any]] = response.json()["requests"]
    return entries


def _writes(entries: list[dict[str, Any]]) -> list[str]:
    """Every call that is neither a GET nor a validateOnly request."""
    return [
        f"{e['method']} {e['path']}"
        for e in entries
        if e["method"] != "GET" and e["query"].get("validateOnly") != ["true"]
    ]


def _service(service_id: str) -> run_v2.Service:
    cloud = clients.resolve_cloud()
    client = clients.run_services_client(cloud)
    return client.get_service(name=client.service_path(cloud.project, "us-central1", service_id))


def _actions(result: dict[str, Any]) -> dict[str, str]:
    return {c["resource"]: c["action"] for c in result["changes"]}


def test_plan_create_no_change_and_a_changed_field_without_side_effects(
    emulator_api: EmulatorControl, service_id: str
) -> None:
    params = DeployParameters(service=service_id, run_smoke_test=False)
    first = plan(params)
    assert _actions(first) == {
        "APIs": "create",
        "repository": "create",
        "image": "create",
        "build account": "create",
        "service account": "create",
        "service": "create",
        "IAM binding": "create",
    }
    assert _writes(_log(emulator_api)) == []
    assert emulator_api.state()["backends"]["cloud_run"]["services"] == []

    deploy(params)
    since = len(_log(emulator_api))
    unchanged = plan(params)
    assert unchanged["summary"] == NO_CHANGES
    assert set(_actions(unchanged).values()) == {"no change"}
    assert [e["method"] for e in _log(emulator_api, since)] == ["GET"] * len(
        _log(emulator_api, since)
    )
    artifact = Artifact.get(f"plan-{service_id}")
    assert artifact is not None and NO_CHANGES in str(artifact.data)

    before = _service(service_id)
    since = len(_log(emulator_api))
    changed = plan(params.model_copy(update={"max_instances": 3}))
    service = next(c for c in changed["changes"] if c["resource"] == "service")
    assert service["action"] == "update"
    assert "template.max_instances: 7 → 3" in service["details"]
    assert "validated" in service["details"]
    entries = _log(emulator_api, since)
    assert _writes(entries) == []
    assert any(e["method"] == "PATCH" and e["query"].get("validateOnly") for e in entries)
    after = _service(service_id)
    assert (after.generation, after.template.scaling.max_instance_count) == (
        before.generation,
        7,
    )

    blocked = plan(params.model_copy(update={"max_instances": 50}))
    service = next(c for c in blocked["changes"] if c["resource"] == "service")
    assert service["action"] == "blocked" and "quota" in service["details"]


async def _paused_deploy(service_id: str, timeout: float = 120) -> UUID:
    paused = FlowRunFilter(state=FlowRunFilterState(type=StateTypeFilter(any_=[StateType.PAUSED])))
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while time.monotonic() < deadline:
            for run in await client.read_flow_runs(flow_run_filter=paused):
                if run.parameters.get("params", {}).get("service") == service_id:
                    return run.id
            await asyncio.sleep(0.5)
    raise AssertionError("no paused deploy run")


def test_require_approval_pauses_until_approved_and_a_rejection_changes_nothing(
    emulator_api: EmulatorControl, service_id: str
) -> None:
    deploy(DeployParameters(service=service_id, run_smoke_test=False))
    before = _service(service_id)
    params = DeployParameters(
        service=service_id, run_smoke_test=False, max_instances=3, require_approval=True
    )
    with ThreadPoolExecutor(1) as pool:
        rejected = pool.submit(deploy, params)
        run_id = asyncio.run(_paused_deploy(service_id))
        since = len(_log(emulator_api))
        resume_flow_run(run_id, run_input={"approve": False, "comment": "not now"})
        result = rejected.result(timeout=120)
    assert result["approved"] is False
    assert _writes(_log(emulator_api, since)) == []
    assert _service(service_id).generation == before.generation

    with ThreadPoolExecutor(1) as pool:
        approved = pool.submit(deploy, params)
        run_id = asyncio.run(_paused_deploy(service_id))
        resume_flow_run(run_id, run_input={"approve": True})
        result = approved.result(timeout=300)
    assert result["actions"]["service"] == "updated"
    assert _service(service_id).template.scaling.max_instance_count == 3
