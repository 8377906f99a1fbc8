"""The preflight's pure checks and how its report turns failures into one named error."""

from __future__ import annotations

import pytest
from google.cloud import cloudquotas_v1, run_v2

from tasks import preflight, quotas
from tasks.errors import AccessDeniedError, ConfigurationError, QuotaExceededError
from tasks.models import L4_REGIONS, ServiceSpec
from tasks.preflight import Check, PreflightReport


def test_region_check_names_the_regions_with_l4() -> None:
    spec = ServiceSpec.model_construct(**{**ServiceSpec().model_dump(), "region": "us-west2"})
    check = preflight.check_region(spec)
    assert check.outcome == "failed"
    assert "region us-west2 has no Cloud Run L4 GPUs" in check.detail
    for region in L4_REGIONS:
        assert region in check.detail
    assert "asia-south1 (by invitation)" in check.detail
    assert preflight.check_region(ServiceSpec()).outcome == "passed"
    no_gpu = ServiceSpec(gpu=0, region="us-west2")
    assert preflight.check_region(no_gpu).outcome == "skipped"


def test_region_is_also_refused_by_the_parameters() -> None:
    with pytest.raises(ValueError, match=r"the regions that have them: .*us-central1"):
        ServiceSpec(region="us-west2")


def test_permissions_check_lists_exactly_the_missing_ones() -> None:
    required = preflight.REQUIRED_PERMISSIONS
    granted = [p for p in required if p not in ("cloudbuild.builds.create", "run.services.create")]
    check = preflight.check_permissions(required, granted)
    assert check.outcome == "failed"
    assert "lacks cloudbuild.builds.create, run.services.create on the project" in check.detail
    assert preflight.check_permissions(required, list(required)).outcome == "passed"


def _info(default: int, **regions: int) -> cloudquotas_v1.QuotaInfo:
    infos = [
        cloudquotas_v1.DimensionsInfo(
            dimensions={"region": r.replace("_", "-")}, details=cloudquotas_v1.QuotaDetails(value=v)
        )
        for r, v in regions.items()
    ]
    infos.append(cloudquotas_v1.DimensionsInfo(details=cloudquotas_v1.QuotaDetails(value=default)))
    return cloudquotas_v1.QuotaInfo(dimensions_infos=infos)


def test_region_value_prefers_the_region_then_the_default() -> None:
    info = _info(20_000, europe_west4=8_000)
    assert preflight.region_value(info, "europe-west4") == 8_000
    assert preflight.region_value(info, "us-central1") == 20_000
    assert preflight.region_value(cloudquotas_v1.QuotaInfo(), "us-central1") is None


def _gpu_service(name: str, max_instances: int, no_zonal: bool = True) -> run_v2.Service:
    return run_v2.Service(
        name=f"projects/p/locations/us-central1/services/{name}",
        template=run_v2.RevisionTemplate(
            scaling=run_v2.RevisionScaling(max_instance_count=max_instances),
            node_selector=run_v2.NodeSelector(accelerator="nvidia-l4"),
            gpu_zonal_redundancy_disabled=no_zonal,
            containers=[
                run_v2.Container(resources=run_v2.ResourceRequirements(limits={"cpu": "8"}))
            ],
        ),
    )


def test_gpus_held_by_other_services_in_the_same_pool() -> None:
    spec = ServiceSpec(service="mine")
    others = [
        _gpu_service("mine", 7),  # this service itself: replaced by the deploy
        _gpu_service("other", 3),
        _gpu_service("zonal", 2, no_zonal=False),  # the other pool
        run_v2.Service(name="projects/p/locations/us-central1/services/cpu-only"),
    ]
    assert preflight.gpu_held_by_others(others, spec) == 3
    assert (
        preflight.gpu_held_by_others(others, spec.model_copy(update={"gpu_zonal_redundancy": True}))
        == 2
    )


def test_quota_check_passes_or_names_each_quota() -> None:
    spec = ServiceSpec()
    enough = {quotas.GPU_NO_ZONAL: 7, quotas.CPU: 56_000, quotas.MEMORY: 224 * 2**30}
    check, error = preflight.check_quotas(spec, enough, "p-123456")
    assert check.outcome == "passed" and error is None
    check, error = preflight.check_quotas(spec, {**enough, quotas.GPU_NO_ZONAL: 3}, "p-123456")
    assert check.outcome == "failed" and error is not None and error.max_fit == 3
    assert "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion" in check.detail


def test_report_raises_one_error_naming_every_problem() -> None:
    quota_error = QuotaExceededError("q", quota=quotas.CPU, max_fit=2)
    report = PreflightReport(
        (
            Check("region", "passed", "ok"),
            Check("permissions", "failed", "the caller lacks run.services.create"),
            Check("quotas", "failed", "CpuAllocPerProjectRegion is 20 vCPU"),
        ),
        quota_error,
    )
    with pytest.raises(AccessDeniedError) as info:
        report.raise_for_problems()
    assert "run.services.create" in str(info.value) and "CpuAllocPerProjectRegion" in str(
        info.value
    )
    only_quota = PreflightReport((report.checks[2],), quota_error)
    with pytest.raises(QuotaExceededError) as quota:
        only_quota.raise_for_problems()
    assert (quota.value.quota, quota.value.max_fit) == (quotas.CPU, 2)
    region = PreflightReport((Check("region", "failed", "no L4"),))
    with pytest.raises(ConfigurationError):
        region.raise_for_problems()
    fine = PreflightReport((Check("region", "passed", "ok"), Check("quotas", "not checked", "403")))
    fine.raise_for_problems()  # a checker that could not answer never blocks
    assert fine.summary() == {"region": "passed: ok", "quotas": "not checked: 403"}
