"""Cloud Quotas (official client), Resource Manager testIamPermissions, and Cloud Run admitting
against the same quota values."""

from __future__ import annotations

import httpx
import pytest
from google.api_core import exceptions
from google.auth.transport.requests import AuthorizedSession
from google.cloud import cloudquotas_v1, run_v2

from emulator.gcp.auth import admin_email
from tasks import quotas
from tests.gcp.conftest import PROJECT, LocalGcp

RUN = "run.googleapis.com"
QUOTAS_API = "cloudquotas.googleapis.com"
CRM = "cloudresourcemanager.googleapis.com"


def _info_name(quota_id: str, service: str = RUN) -> str:
    return f"projects/{PROJECT}/locations/global/services/{service}/quotaInfos/{quota_id}"


def _value(info: cloudquotas_v1.QuotaInfo, region: str) -> int:
    for dims in info.dimensions_infos:  # most specific first; the default has no region
        if dims.dimensions.get("region", region) == region:
            return int(dims.details.value)
    raise AssertionError("no value for the region")


def test_quota_info_defaults_follow_gpu_quota_and_overrides_win(local_gcp: LocalGcp) -> None:
    client = local_gcp.client(cloudquotas_v1.CloudQuotasClient)
    with pytest.raises(exceptions.Forbidden) as disabled:
        client.get_quota_info(name=_info_name(quotas.CPU))
    assert disabled.value.reason == "SERVICE_DISABLED"
    local_gcp.enable(QUOTAS_API)

    gpu = client.get_quota_info(name=_info_name(quotas.GPU_NO_ZONAL))
    assert gpu.quota_id == quotas.GPU_NO_ZONAL
    assert gpu.metric == "run.googleapis.com/nvidia_l4_gpu_allocation_no_zonal_redundancy"
    assert gpu.container_type == cloudquotas_v1.QuotaInfo.ContainerType.PROJECT
    assert _value(gpu, "us-central1") == local_gcp.emulator.config.gpu_quota
    local_gcp.emulator.config = local_gcp.emulator.config.model_copy(update={"gpu_quota": 2})
    assert _value(client.get_quota_info(name=_info_name(quotas.GPU_NO_ZONAL)), "us-east4") == 2

    response = httpx.post(
        f"{local_gcp.base_url}/_emulator/quotas",
        json={"region": "europe-west4", "quotas": {quotas.CPU: 20_000}},
    )
    assert response.status_code == 200 and response.json()[quotas.CPU] == 20_000
    cpu = client.get_quota_info(name=_info_name(quotas.CPU))
    assert _value(cpu, "europe-west4") == 20_000
    assert _value(cpu, "us-central1") == 200_000
    assert "europe-west4" not in cpu.dimensions_infos[-1].applicable_locations

    with pytest.raises(exceptions.NotFound):
        client.get_quota_info(name=_info_name("NoSuchQuota"))
    with pytest.raises(exceptions.NotFound):
        client.get_quota_info(name=_info_name(quotas.CPU, "compute.googleapis.com"))
    bad = httpx.post(f"{local_gcp.base_url}/_emulator/quotas", json={"region": "us-central1"})
    assert bad.status_code == 400


def _test_permissions(local_gcp: LocalGcp, permissions: list[str]) -> httpx.Response | object:
    session = AuthorizedSession(local_gcp.credentials())
    url = f"{local_gcp.base_url}/v3/projects/{PROJECT}:testIamPermissions"
    return session.post(url, json={"permissions": permissions}, timeout=30)


def test_owner_holds_every_permission_until_a_test_denies_some(local_gcp: LocalGcp) -> None:
    local_gcp.enable(CRM)
    asked = ["run.services.create", "cloudbuild.builds.create", "iam.serviceAccounts.actAs"]
    response = _test_permissions(local_gcp, asked)
    assert response.status_code == 200 and response.json() == {"permissions": asked}

    me = f"serviceAccount:{admin_email(PROJECT)}"
    for body in ({"deny": ["iam.serviceAccounts.actAs"], "member": me}, {"deny": asked[:1]}):
        assert httpx.post(f"{local_gcp.base_url}/_emulator/permissions", json=body).is_success
    response = _test_permissions(local_gcp, asked)
    assert response.json() == {"permissions": ["cloudbuild.builds.create"]}
    # Denied for someone else only: no effect on this caller.
    other = {"deny": ["cloudbuild.builds.create"], "member": "user:someone@example.com"}
    assert httpx.post(f"{local_gcp.base_url}/_emulator/permissions", json=other).is_success
    assert _test_permissions(local_gcp, asked[1:2]).json() == {"permissions": asked[1:2]}
    assert _test_permissions(local_gcp, asked[:1]).json() == {}  # proto3 JSON omits an empty list

    assert _test_permissions(local_gcp, ["storage.*"]).status_code == 400
    anonymous = httpx.post(
        f"{local_gcp.base_url}/v3/projects/{PROJECT}:testIamPermissions",
        json={"permissions": asked},
    )
    assert anonymous.status_code == 401


def _gpu_service(cpu: str, memory: str, max_instances: int) -> run_v2.Service:
    return run_v2.Service(
        template=run_v2.RevisionTemplate(
            scaling=run_v2.RevisionScaling(max_instance_count=max_instances),
            node_selector=run_v2.NodeSelector(accelerator="nvidia-l4"),
            gpu_zonal_redundancy_disabled=True,
            containers=[
                run_v2.Container(
                    image="us-docker.pkg.dev/cloudrun/container/hello",
                    resources=run_v2.ResourceRequirements(
                        limits={"cpu": cpu, "memory": memory, "nvidia.com/gpu": "1"},
                        cpu_idle=False,
                    ),
                )
            ],
        )
    )


def test_cloud_run_admits_against_the_same_cpu_and_memory_quota(local_gcp: LocalGcp) -> None:
    local_gcp.enable(RUN)
    body = {"region": "us-central1", "quotas": {quotas.CPU: 20_000, quotas.MEMORY: 40 * 2**30}}
    assert httpx.post(f"{local_gcp.base_url}/_emulator/quotas", json=body).is_success
    client = local_gcp.client(run_v2.ServicesClient)
    with pytest.raises(exceptions.BadRequest) as info:
        client.create_service(
            request=run_v2.CreateServiceRequest(
                parent=f"projects/{PROJECT}/locations/us-central1",
                service=_gpu_service("8", "32Gi", 4),
                service_id="too-big",
                validate_only=True,
            )
        )
    message = info.value.message
    assert "Max instances must be set to 1 or fewer to set the requested total CPU." in message
    assert "CpuAllocPerProjectRegion requested: 32000 allowed: 20000" in message
    assert f"MemAllocPerProjectRegion requested: {4 * 32 * 2**30} allowed: {40 * 2**30}" in message
    parsed = quotas.quota_error_from_message(message)
    assert parsed.quota == quotas.CPU and parsed.max_fit == 1
