"""Every quota message Google sends parsed into one QuotaExceededError; what max_instances needs."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc

from tasks import quotas
from tasks.errors import QuotaExceededError, translate_google_error
from tasks.models import ServiceSpec
from tasks.retries import is_transient

PREFIX = "spec.template.metadata.annotations[autoscaling.knative.dev/maxScale]: "

# Verbatim shapes of Google's messages (sources in tasks/quotas.py's docstring).
GPU_WITH_NUMBERS = (
    PREFIX + "Max instances must be set to 3 or fewer in order to set GPU requirements. To "
    "request quota: g.co/cloudrun/gpu-quota Quota violated: "
    "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion requested: 7 allowed: 3"
)
NO_GPU_QUOTA_ZONAL = (
    PREFIX + "You do not have quota for using GPUs with zonal redundancy. Learn more about GPU "
    "zonal redundancy: g.co/cloudrun/gpu-redundancy-help\n\n"
    "To request quota: g.co/cloudrun/gpu-quota"
)
NO_GPU_QUOTA_NO_ZONAL = NO_GPU_QUOTA_ZONAL.replace("with zonal", "without zonal")
CPU_AND_MEMORY = (
    "scaling.max_instance_count: Max instances must be set to 5 or fewer to set the requested "
    "total CPU.\n\nQuota violated:\nCpuAllocPerProjectRegion requested: 400000 allowed: 20000\n"
    "MemAllocPerProjectRegion requested: 858993459200 allowed: 42949672960"
)
CPU_BULLETED = (
    "ERROR: Max instances must be set to 28 or fewer to set the requested total CPU.\n"
    "Quota violated:\n- CpuAllocPerProjectRegion requested: 200000 allowed: 56000\n"
    "- MemAllocPerProjectRegion requested: 214748364800 allowed: 120259084288"
)
CPU_ZERO_FITS = (
    PREFIX + "Max instances must be set to 0 or fewer in order to set the requested total CPU. "
    "Quota violated: CpuAllocPerProjectRegion requested: 56000 allowed: 4000"
)
GPU_RECONCILING = (
    "Revision 'tf-test-00001-n45' is not ready and cannot serve traffic. Quota exceeded for total "
    "allowable count of GPUs per project per region."
)


@pytest.mark.parametrize(
    ("message", "quota", "max_fit", "named"),
    [
        (GPU_WITH_NUMBERS, quotas.GPU_NO_ZONAL, 3, ["allowed 3 GPU, requested 7 GPU"]),
        (NO_GPU_QUOTA_ZONAL, quotas.GPU_ZONAL, 0, ["no quota at all"]),
        (NO_GPU_QUOTA_NO_ZONAL, quotas.GPU_NO_ZONAL, 0, ["no quota at all"]),
        (CPU_AND_MEMORY, quotas.CPU, 5, ["allowed 20 vCPU, requested 400 vCPU", "allowed 40 GiB"]),
        (CPU_BULLETED, quotas.CPU, 28, ["allowed 56 vCPU", quotas.MEMORY]),
        (CPU_ZERO_FITS, quotas.CPU, 0, ["allowed 4 vCPU, requested 56 vCPU"]),
        (GPU_RECONCILING, None, None, ["quota exceeded"]),
    ],
)
def test_every_quota_message_becomes_one_error(
    message: str, quota: str | None, max_fit: int | None, named: list[str]
) -> None:
    for exc in (gexc.BadRequest(message), gexc.FailedPrecondition(message)):
        error = translate_google_error(exc, "deploy")
        assert isinstance(error, QuotaExceededError)
        assert error.quota == quota
        assert error.max_fit == max_fit
        text = str(error)
        for part in named:
            assert part in text
        assert "max_instances=0" not in text  # never advised, whatever Google says
        assert "Google said: " + message in text
        if max_fit == 0:
            assert "Not one instance fits: request quota at" in text
        elif max_fit:
            assert f"set max_instances={max_fit}," in text


def test_links_follow_the_quota() -> None:
    assert "https://g.co/cloudrun/gpu-quota" in str(
        quotas.quota_error_from_message(GPU_WITH_NUMBERS)
    )
    cpu = str(quotas.quota_error_from_message(CPU_AND_MEMORY))
    assert quotas.QUOTAS_CONSOLE_URL in cpu and "g.co/cloudrun" not in cpu.split("Google said")[0]


@pytest.mark.parametrize(
    "message",
    [
        "Permission denied on resource project p.",
        "Quota exceeded for quota metric 'Read requests' and limit 'Read requests per minute'",
        "Max instances must be set",  # no number: not Google's message
    ],
)
def test_other_messages_are_not_quota_errors(message: str) -> None:
    assert not quotas.is_quota_message(message)


def test_rate_limit_quota_stays_transient_and_allocation_quota_does_not() -> None:
    assert is_transient(gexc.TooManyRequests("Quota exceeded for quota metric 'Read requests'"))
    assert not is_transient(gexc.TooManyRequests(GPU_WITH_NUMBERS))
    assert not is_transient(gexc.TooManyRequests(NO_GPU_QUOTA_NO_ZONAL))


def test_per_instance_needs_in_google_units() -> None:
    spec = ServiceSpec()  # the tutorial's 8 vCPU, 32Gi, 1 L4 without zonal redundancy
    assert quotas.per_instance(spec) == {
        quotas.GPU_NO_ZONAL: 1,
        quotas.CPU: 8000,
        quotas.MEMORY: 32 * 2**30,
    }
    zonal = ServiceSpec(gpu_zonal_redundancy=True, memory="16384Mi")
    assert quotas.per_instance(zonal)[quotas.GPU_ZONAL] == 1
    assert quotas.per_instance(zonal)[quotas.MEMORY] == 16 * 2**30
    assert quotas.GPU_NO_ZONAL not in quotas.per_instance(zonal)


def test_shortfalls_name_limit_need_and_what_fits() -> None:
    spec = ServiceSpec(max_instances=7)
    limits = {quotas.GPU_NO_ZONAL: 7, quotas.CPU: 20_000, quotas.MEMORY: 42949672960}
    found = quotas.shortfalls(spec, limits)
    assert [(s.quota_id, s.need, s.max_fit) for s in found] == [
        (quotas.CPU, 56_000, 2),
        (quotas.MEMORY, 7 * 32 * 2**30, 1),
    ]
    error = quotas.shortfall_error(found, "my-proj", "us-central1")
    text = str(error)
    assert error.max_fit == 1 and error.quota == quotas.CPU
    assert "CpuAllocPerProjectRegion (Total CPU allocation) is 20 vCPU" in text
    assert "needs 56 vCPU (7 × 8 vCPU), so at most 2 instance(s) fit" in text
    assert "MemAllocPerProjectRegion" in text and "needs 224 GiB" in text
    assert "set max_instances=1," in text
    assert "--quota-id=CpuAllocPerProjectRegion --preferred-value=56000" in text
    assert quotas.shortfalls(spec.model_copy(update={"max_instances": 1}), limits) == []


def test_zero_gpu_quota_asks_for_quota_never_for_zero_instances() -> None:
    found = quotas.shortfalls(ServiceSpec(max_instances=1), {quotas.GPU_NO_ZONAL: 0})
    text = str(quotas.shortfall_error(found, "p-123456", "us-central1"))
    assert "at most 0 instance(s) fit" in text
    assert "Not one instance fits: request quota at https://g.co/cloudrun/gpu-quota" in text
    assert "max_instances=0" not in text
