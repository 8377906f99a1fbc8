"""Ownership: deploy and teardown leave alone what this project did not create (issue 13, item 3).

The "pre-existing" resources are made directly with the official clients, as someone else's
would be; the emulator's request log proves that a refusal sends no write.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from google.cloud import artifactregistry_v1, run_v2, service_usage_v1

from flows.deploy import deploy
from flows.parameters import DeployParameters
from flows.teardown import TeardownParameters, teardown
from tasks import clients
from tasks.errors import UnmanagedResourceError
from tests.flows.conftest import EmulatorControl

pytestmark = pytest.mark.slow
REGION = "us-central1"


def _requests(emulator: EmulatorControl, since: int = 0) -> list[dict[str, Any]]:
    response = httpx.get(f"{emulator.base_url}/_emulator/requests?since={since}", timeout=30)
    response.raise_for_status()
    entries: list[dict[str, Any]] = response.json()["requests"]
    return entries


def _writes_to(entries: list[dict[str, Any]], fragment: str) -> list[str]:
    return [
        f"{e['method']} {e['path']}"
        for e in entries
        if e["method"] != "GET" and fragment in e["path"]
    ]


def _enable(*apis: str) -> None:
    cloud = clients.resolve_cloud()
    clients.service_usage_client(cloud).batch_enable_services(
        request=service_usage_v1.BatchEnableServicesRequest(
            parent=f"projects/{cloud.project}", service_ids=list(apis)
        )
    ).result(timeout=60)


def _someone_elses_service(service_id: str) -> run_v2.Service:
    _enable("run.googleapis.com")
    cloud = clients.resolve_cloud()
    client = clients.run_services_client(cloud)
    client.create_service(
        parent=f"projects/{cloud.project}/locations/{REGION}",
        service_id=service_id,
        service=run_v2.Service(
            labels={"team": "web"},
            template=run_v2.RevisionTemplate(
                containers=[run_v2.Container(image="us-docker.pkg.dev/cloudrun/container/hello")]
            ),
        ),
    )
    return client.get_service(name=client.service_path(cloud.project, REGION, service_id))


def _get_service(service_id: str) -> run_v2.Service:
    cloud = clients.resolve_cloud()
    client = clients.run_services_client(cloud)
    return client.get_service(name=client.service_path(cloud.project, REGION, service_id))


def test_deploy_refuses_an_unlabelled_service_and_adopts_it_when_asked(
    emulator_api: EmulatorControl, service_id: str
) -> None:
    before = _someone_elses_service(service_id)
    since = len(_requests(emulator_api))

    params = DeployParameters(service=service_id, run_smoke_test=False)
    with pytest.raises(UnmanagedResourceError, match="not labelled managed-by=ollama-cloudrun"):
        deploy(params)

    log = _requests(emulator_api, since)
    assert any(e["method"] == "GET" and service_id in e["path"] for e in log)
    assert _writes_to(log, f"/services/{service_id}") == []
    assert not any(e["path"].endswith("/builds") and e["method"] == "POST" for e in log)
    after = _get_service(service_id)
    assert (after.generation, dict(after.labels)) == (before.generation, {"team": "web"})

    adopted = deploy(params.model_copy(update={"adopt": True}))
    assert adopted["actions"]["service"] == "updated"
    labels = dict(_get_service(service_id).labels)
    assert labels["managed-by"] == "ollama-cloudrun"
    assert labels["ollama-cloudrun-owner"] == "deploy"
    assert labels["last-used"].isdigit()


def test_teardown_refuses_an_unlabelled_repository_until_forced(
    emulator_api: EmulatorControl, service_id: str
) -> None:
    _enable("artifactregistry.googleapis.com")
    cloud = clients.resolve_cloud()
    registry = clients.artifact_registry_client(cloud)
    repository = f"theirs-{service_id[-8:]}"
    registry.create_repository(
        parent=f"projects/{cloud.project}/locations/{REGION}",
        repository_id=repository,
        repository=artifactregistry_v1.Repository(
            format_=artifactregistry_v1.Repository.Format.DOCKER
        ),
    ).result(timeout=60)
    name = registry.repository_path(cloud.project, REGION, repository)
    since = len(_requests(emulator_api))

    params = TeardownParameters(service=service_id, repository=repository)
    with pytest.raises(UnmanagedResourceError, match=f"repository {name} exists but"):
        teardown(params)
    assert _writes_to(_requests(emulator_api, since), "/") == []  # nothing at all deleted
    assert registry.get_repository(name=name).name == name

    rows = teardown(params.model_copy(update={"force": True}))
    assert {r["kind"]: r["result"] for r in rows}["repository (with its images)"] == "deleted"
