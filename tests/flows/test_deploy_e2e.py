"""End to end: deploy, smoke test and teardown against emulator.gcp with the official clients."""

from __future__ import annotations

import time

import httpx
import pytest
from google.api_core import exceptions as gexc
from google.cloud import run_v2
from prefect.artifacts import Artifact

from flows.deploy import DeployParameters, deploy
from flows.smoke_test import SmokeTestParameters, smoke_test
from flows.teardown import TeardownParameters, teardown
from tasks import clients, idle, rollout
from tasks.errors import QuotaExceededError, SmokeTestError
from tests.flows.conftest import EmulatorControl

pytestmark = pytest.mark.slow


def _get_service(service_id: str) -> run_v2.Service:
    cloud = clients.resolve_cloud()
    client = clients.run_services_client(cloud)
    return client.get_service(name=client.service_path(cloud.project, "us-central1", service_id))


def _make_public(name: str, uri: str) -> None:
    """allUsers may invoke, once the binding has propagated (the emulator's few seconds)."""
    client = clients.run_services_client(clients.resolve_cloud())
    policy = client.get_iam_policy(request={"resource": name})
    policy.bindings.add(role="roles/run.invoker", members=["allUsers"])
    client.set_iam_policy(request={"resource": name, "policy": policy})
    deadline = time.monotonic() + 60
    while httpx.get(f"{uri}/api/tags", timeout=30).status_code == 403:
        assert time.monotonic() < deadline, "allUsers never honoured"
        time.sleep(0.5)


def _builds(emulator: EmulatorControl) -> int:
    return len(emulator.state()["backends"]["cloud_build"]["builds"])


def _build_account_grants(emulator: EmulatorControl) -> list[str]:
    """Where the emulator's IAM policies name deploy's build account (resource: role)."""
    member = f"serviceAccount:ollama-build@{emulator.project}.iam.gserviceaccount.com"
    state = emulator.state()["backends"]
    policies = {**state["resource_policies"], **state["storage_front"]["policies"]}

    def kind(resource: str) -> str:
        if "/repositories/" in resource:
            return "repository"
        return "project" if resource.startswith("projects/") else "bucket"

    return sorted(
        f"{kind(resource)}: {b['role']}"
        for resource, policy in policies.items()
        for b in policy.get("bindings", [])
        if member in b["members"]
    )


def _results(rows: list[dict[str, str]]) -> dict[str, str]:
    return {r["kind"]: r["result"] for r in rows}


def test_deploy_noop_new_model_and_teardown_twice(
    emulator_api: EmulatorControl, service_id: str
) -> None:
    params = DeployParameters(service=service_id)
    first = deploy(params)
    assert first["actions"]["service"] == "created"
    assert first["actions"]["image"] == "built"
    assert first["digest"].startswith("sha256:")
    assert first["smoke test"]["sample answer"]
    created = _get_service(service_id)
    assert created.template.containers[0].image.endswith(first["digest"])
    assert dict(created.labels)["managed-by"] == "ollama-cloudrun"
    artifact = Artifact.get(f"deploy-{service_id}")
    assert artifact is not None and first["uri"] in str(artifact.data)
    builds = _builds(emulator_api)
    # The build ran as deploy's own account, granted the three roles at their narrowest scope.
    build = emulator_api.state()["backends"]["cloud_build"]["builds"][-1]["build"]
    assert build["serviceAccount"].endswith(
        f"/ollama-build@{emulator_api.project}.iam.gserviceaccount.com"
    )
    assert build["options"]["logging"] == "CLOUD_LOGGING_ONLY"
    assert _build_account_grants(emulator_api) == [
        "bucket: roles/storage.objectViewer",
        "project: roles/logging.logWriter",
        "repository: roles/artifactregistry.writer",
    ]

    # Nothing changed: no build, no update call, no new revision.
    second = deploy(params)
    assert second["actions"]["service"] == "unchanged"
    assert second["actions"]["image"] == "skipped (tag exists)"
    assert _builds(emulator_api) == builds
    again = _get_service(service_id)
    assert (again.generation, again.latest_ready_revision) == (
        created.generation,
        created.latest_ready_revision,
    )

    # A new model tag: a new image (new content hash), a new revision serving that model.
    third = deploy(params.model_copy(update={"model": "gemma2:2b"}))
    assert third["actions"] == {**third["actions"], "image": "built", "service": "updated"}
    assert third["image"] != first["image"]
    assert _builds(emulator_api) == builds + 1
    updated = _get_service(service_id)
    assert updated.latest_ready_revision != created.latest_ready_revision
    assert "gemma2:2b" in third["smoke test"]["models listed"]

    # Private: the request without a token got Cloud Run's 403. Made public (allUsers may
    # invoke): the smoke test fails, a tokenless request was served.
    smoke = SmokeTestParameters(service=service_id)
    assert smoke_test(smoke)["without token"] == 403
    _make_public(updated.name, updated.uri)
    public = smoke_test(smoke, return_state=True)
    assert public.is_failed()
    with pytest.raises(SmokeTestError, match="answered 200 to a request without a token"):
        public.result()

    gone = teardown(TeardownParameters(service=service_id))
    assert set(_results(gone).values()) == {"deleted"}
    assert "staging object" in _results(gone)
    accounts = [r["name"] for r in gone if r["kind"] == "service account"]
    assert any(a.startswith("ollama-build@") for a in accounts), gone
    # No grant outlives the account (the repository's went with the repository).
    left = [g for g in _build_account_grants(emulator_api) if not g.startswith("repository")]
    assert left == []
    with pytest.raises(gexc.NotFound):
        _get_service(service_id)
    twice = teardown(TeardownParameters(service=service_id))
    assert set(_results(twice).values()) == {"already gone"}


def test_gpu_quota_too_small_then_teardown_partial(
    emulator_api: EmulatorControl, service_id: str
) -> None:
    emulator_api.configure(gpu_quota=3)
    with pytest.raises(QuotaExceededError) as info:
        deploy(DeployParameters(service=service_id))
    message = str(info.value)
    assert "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion" in message
    assert "max_instances=3" in message
    assert info.value.max_fit == 3
    with pytest.raises(gexc.NotFound):
        _get_service(service_id)  # nothing half-made left serving

    # The preflight stopped it before anything was made: teardown finds nothing.
    assert emulator_api.state()["backends"]["cloud_build"]["builds"] == []
    rows = _results(teardown(TeardownParameters(service=service_id)))
    assert rows["service"] == "already gone"
    assert rows["repository (with its images)"] == "already gone"
    assert rows["service account"] == "already gone"

    # Within the quota it deploys, and the artifact's summary carries the preflight.
    result = deploy(DeployParameters(service=service_id, max_instances=3))
    assert result["actions"]["service"] == "created"
    assert result["preflight"]["quotas"].startswith("passed: max_instances=3 fits")
    assert result["preflight"]["permissions"].startswith("passed")
    teardown(TeardownParameters(service=service_id))


def test_smoke_test_failure_keeps_the_traffic(
    emulator_api: EmulatorControl, service_id: str
) -> None:
    params = DeployParameters(service=service_id)
    deploy(params)
    before = _get_service(service_id)
    assert before.template.scaling.max_instance_count == 7

    # Every new revision now fails its generations with a 500: the changed deploy's candidate
    # fails its smoke test, the traffic never leaves the serving revision, and the run fails.
    emulator_api.configure(sim_env={"OLLAMA_SIM_FAULT_500": "1"})
    try:
        state = deploy(params.model_copy(update={"max_instances": 5}), return_state=True)
    finally:
        emulator_api.configure(sim_env={})
    assert state.is_failed()
    after = _get_service(service_id)
    assert rollout.serving(after) == (rollout.Share(before.latest_ready_revision, 100),)
    assert after.latest_created_revision != before.latest_created_revision  # made, never served
    assert not [s for s in after.traffic_statuses if s.tag]
    teardown(TeardownParameters(service=service_id))


def test_propagation_delay_and_sweep(
    emulator_api: EmulatorControl, service_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator_api.configure(propagation_delay_seconds=3)
    result = deploy(DeployParameters(service=service_id))
    assert result["actions"]["service"] == "created"
    emulator_api.configure(propagation_delay_seconds=0)

    kept = teardown(TeardownParameters(sweep=True, idle_hours=24))
    assert {r["result"] for r in kept} == {"kept"}  # used a moment ago
    assert _get_service(service_id).uri

    later = time.time() + 25 * 3600  # a day and an hour without use
    monkeypatch.setattr(idle, "now", lambda: later)
    swept = _results(teardown(TeardownParameters(sweep=True, idle_hours=24)))
    assert swept == {
        "service": "deleted",
        "repository (with its images)": "deleted",
        "staging object": "deleted",
        "service account": "deleted",
    }
    with pytest.raises(gexc.NotFound):
        _get_service(service_id)
