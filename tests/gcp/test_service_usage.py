"""Service Usage v1 through the official client, and the SERVICE_DISABLED gate."""

from __future__ import annotations

import httpx
import pytest
from google.api_core import exceptions
from google.cloud import artifactregistry_v1, service_usage_v1

from emulator.gcp.projects import project_number
from tests.gcp.conftest import PROJECT, LocalGcp

AR = "artifactregistry.googleapis.com"
RUN = "run.googleapis.com"


def test_disabled_api_gives_403_service_disabled(local_gcp: LocalGcp) -> None:
    ar = local_gcp.client(artifactregistry_v1.ArtifactRegistryClient)
    with pytest.raises(exceptions.Forbidden) as info:
        ar.list_repositories(parent=f"projects/{PROJECT}/locations/us-central1")
    err = info.value
    number = project_number(PROJECT)
    assert err.reason == "SERVICE_DISABLED"
    assert err.domain == "googleapis.com"
    assert err.metadata["service"] == AR
    assert err.metadata["consumer"] == f"projects/{number}"
    assert "Artifact Registry API has not been used in project" in err.message


def test_batch_enable_then_noop(su_client: service_usage_v1.ServiceUsageClient) -> None:
    parent = f"projects/{PROJECT}"
    op = su_client.batch_enable_services(request={"parent": parent, "service_ids": [AR, RUN]})
    assert op.operation.name.startswith(f"operations/acat.p2-{project_number(PROJECT)}-")
    result = op.result(timeout=30)
    assert {s.config.name for s in result.services} == {AR, RUN}
    assert all(s.state == service_usage_v1.State.ENABLED for s in result.services)
    assert result.services[0].name.startswith(f"projects/{project_number(PROJECT)}/services/")
    again = su_client.batch_enable_services(request={"parent": parent, "service_ids": [RUN]})
    assert again.operation.name == "operations/noop.DONE_OPERATION"
    assert again.result(timeout=30).services[0].config.name == RUN


def test_enable_get_batch_get_disable(su_client: service_usage_v1.ServiceUsageClient) -> None:
    name = f"projects/{PROJECT}/services/{RUN}"
    got = su_client.get_service(request={"name": name})
    assert got.state == service_usage_v1.State.DISABLED
    assert got.config.title == "Cloud Run Admin API"
    su_client.enable_service(request={"name": name}).result(timeout=30)
    batch = su_client.batch_get_services(
        request={
            "parent": f"projects/{PROJECT}",
            "names": [name, f"projects/{PROJECT}/services/{AR}"],
        }
    )
    assert [s.state for s in batch.services] == [
        service_usage_v1.State.ENABLED,
        service_usage_v1.State.DISABLED,
    ]
    su_client.disable_service(request={"name": name}).result(timeout=30)
    assert su_client.get_service(request={"name": name}).state == service_usage_v1.State.DISABLED


def test_bad_requests(su_client: service_usage_v1.ServiceUsageClient) -> None:
    too_many = [f"svc{i}.googleapis.com" for i in range(21)]
    with pytest.raises(exceptions.BadRequest):
        su_client.batch_enable_services(
            request={"parent": f"projects/{PROJECT}", "service_ids": too_many}
        )
    with pytest.raises(exceptions.Forbidden) as info:
        su_client.enable_service(request={"name": f"projects/{PROJECT}/services/nope.example.com"})
    assert info.value.reason == "SERVICE_CONFIG_NOT_FOUND_OR_PERMISSION_DENIED"


def test_operation_held_pending_for_polls(
    local_gcp: LocalGcp, su_client: service_usage_v1.ServiceUsageClient
) -> None:
    httpx.post(
        f"{local_gcp.base_url}/_emulator/config", json={"operation_polls": 2}
    ).raise_for_status()
    op = su_client.enable_service(request={"name": f"projects/{PROJECT}/services/{RUN}"})
    assert not op.done()
    assert not op.done()
    assert op.done()
    assert op.result(timeout=5).service.state == service_usage_v1.State.ENABLED


def test_propagation_delay_keeps_refusing(
    local_gcp: LocalGcp, su_client: service_usage_v1.ServiceUsageClient
) -> None:
    httpx.post(
        f"{local_gcp.base_url}/_emulator/config", json={"propagation_delay_seconds": 3600}
    ).raise_for_status()
    su_client.enable_service(request={"name": f"projects/{PROJECT}/services/{AR}"}).result(
        timeout=30
    )
    ar = local_gcp.client(artifactregistry_v1.ArtifactRegistryClient)
    with pytest.raises(exceptions.Forbidden) as info:
        ar.list_repositories(parent=f"projects/{PROJECT}/locations/us-central1")
    assert info.value.reason == "SERVICE_DISABLED"
    httpx.post(
        f"{local_gcp.base_url}/_emulator/config", json={"propagation_delay_seconds": 0}
    ).raise_for_status()
    assert list(ar.list_repositories(parent=f"projects/{PROJECT}/locations/us-central1")) == []


def test_config_endpoint_rejects_unknown_fields(local_gcp: LocalGcp) -> None:
    r = httpx.post(f"{local_gcp.base_url}/_emulator/config", json={"port": 1})
    assert r.status_code == 400
    assert r.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_unimplemented_route_is_loud_501(local_gcp: LocalGcp) -> None:
    r = httpx.get(f"{local_gcp.base_url}/v1/projects/{PROJECT}/nothingHere")
    assert r.status_code == 501
    assert f"GET /v1/projects/{PROJECT}/nothingHere" in r.json()["error"]["message"]
