"""Deploys that must fail before the build: too little GPU or CPU quota, a region without L4, a
caller missing a permission — each with a named message, and nothing built or created."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from flows.deploy import DeployParameters, deploy
from tasks import quotas
from tasks.errors import AccessDeniedError, QuotaExceededError
from tests.flows.conftest import EmulatorControl

pytestmark = pytest.mark.slow  # the shared Prefect test server and the emulator subprocess


def _nothing_built_or_created(emulator: EmulatorControl) -> None:
    backends = emulator.state()["backends"]
    assert backends["cloud_build"]["builds"] == []
    assert backends["artifact_registry"]["repositories"] == []
    assert backends["cloud_run"]["services"] == []


def _deploy_failing(params: Any, expected: type[Exception]) -> str:
    started = time.monotonic()
    with pytest.raises(expected) as info:
        deploy(params)
    print(f"preflight failed after {time.monotonic() - started:.1f} s")  # the report quotes it
    return str(info.value)


def _set_quotas(emulator: EmulatorControl, **values: int) -> None:
    body = {"region": "us-central1", "quotas": values}
    httpx.post(f"{emulator.base_url}/_emulator/quotas", json=body, timeout=30).raise_for_status()


def test_too_little_gpu_quota_fails_before_the_build(
    emulator_api: EmulatorControl, service_id: str
) -> None:
    emulator_api.configure(gpu_quota=3)
    message = _deploy_failing(DeployParameters(service=service_id), QuotaExceededError)
    assert "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion" in message
    assert "is 3 GPU; max_instances=7 needs 7 GPU (7 × 1 GPU), so at most 3" in message
    assert "set max_instances=3," in message and "https://g.co/cloudrun/gpu-quota" in message
    _nothing_built_or_created(emulator_api)


def test_no_gpu_quota_asks_for_quota_not_zero_instances(
    emulator_api: EmulatorControl, service_id: str
) -> None:
    _set_quotas(emulator_api, **{quotas.GPU_NO_ZONAL: 0})
    message = _deploy_failing(DeployParameters(service=service_id), QuotaExceededError)
    assert "Not one instance fits: request quota at https://g.co/cloudrun/gpu-quota" in message
    assert "max_instances=0" not in message
    _nothing_built_or_created(emulator_api)


def test_too_little_cpu_quota_fails_before_the_build(
    emulator_api: EmulatorControl, service_id: str
) -> None:
    _set_quotas(emulator_api, **{quotas.CPU: 20_000})  # a new project's 20 vCPU
    message = _deploy_failing(DeployParameters(service=service_id), QuotaExceededError)
    assert "CpuAllocPerProjectRegion (Total CPU allocation) is 20 vCPU" in message
    assert "needs 56 vCPU (7 × 8 vCPU), so at most 2 instance(s) fit" in message
    assert "set max_instances=2," in message
    assert "MemAllocPerProjectRegion" not in message  # 224 GiB fits the default
    _nothing_built_or_created(emulator_api)


def test_region_without_l4_fails_naming_the_regions_that_have_it(
    emulator_api: EmulatorControl, service_id: str
) -> None:
    # As the Prefect UI sends it: raw parameters, validated by the flow before anything runs.
    params = {"service": service_id, "region": "us-west2"}
    message = _deploy_failing(params, Exception)
    assert "region us-west2 has no Cloud Run L4 GPUs" in message
    assert "europe-west4" in message and "us-central1" in message
    _nothing_built_or_created(emulator_api)


def test_missing_permission_is_named(emulator_api: EmulatorControl, service_id: str) -> None:
    body = {"deny": ["cloudbuild.builds.create", "iam.serviceAccounts.actAs"]}
    url = f"{emulator_api.base_url}/_emulator/permissions"
    httpx.post(url, json=body, timeout=30).raise_for_status()
    message = _deploy_failing(DeployParameters(service=service_id), AccessDeniedError)
    assert "lacks cloudbuild.builds.create, iam.serviceAccounts.actAs on the project" in message
    _nothing_built_or_created(emulator_api)
