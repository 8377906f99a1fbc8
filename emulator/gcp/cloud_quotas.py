"""Cloud Quotas API v1: the Cloud Run allocation quotas in force, per project and region.

Routes (`google/cloud/cloudquotas_v1/services/cloud_quotas/transports/rest_base.py`, package
google-cloud-quotas; google-api-python-client ships no cloudquotas discovery document):
  GET /v1/projects/{project}/locations/global/services/{service}/quotaInfos/{quotaId} -> QuotaInfo
Control (a prefix Google never uses):
  POST /_emulator/quotas {"project"?, "region", "quotas": {quotaId: value}} -> the values in force

Only `run.googleapis.com`'s four allocation quotas exist here, in Google's units (GPU count,
milli-vCPU, bytes: the units of Cloud Run's own "Quota violated: CpuAllocPerProjectRegion requested:
32000 allowed: 20000" errors). A value set for a region overrides the default, which is, for the GPU
pools, the emulator's `gpu_quota` setting (read live, so `POST /_emulator/config` changes it), and
for CPU and memory 200 vCPU and 800 GiB — a project whose quota was raised; new projects often start
at 20 vCPU / 40 GiB (public deploy logs), which tests set explicitly. Emulated Cloud Run admits a
GPU service against the same values, so what this API says is what a deploy meets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from google.cloud import cloudquotas_v1

from emulator.gcp.errors import invalid_argument, not_found
from emulator.gcp.projects import project_number
from emulator.gcp.routing import Call, Route
from emulator.gcp.service_usage import ServiceUsageBackend

if TYPE_CHECKING:
    from emulator.gcp.registry import Emulator

SERVICE = "cloudquotas.googleapis.com"
RUN = "run.googleapis.com"
GPU_ZONAL = "NvidiaL4GpuAllocPerProjectRegion"
GPU_NO_ZONAL = "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion"
CPU = "CpuAllocPerProjectRegion"
MEMORY = "MemAllocPerProjectRegion"
DEFAULT_CPU_MILLI = 200_000
DEFAULT_MEMORY_BYTES = 800 * 2**30

# quota id -> (metric, metric unit, metric display name, quota display name)
QUOTAS: dict[str, tuple[str, str, str, str]] = {
    GPU_ZONAL: (
        "run.googleapis.com/nvidia_l4_gpu_allocation",
        "1/{project}/{region}",
        "Total Nvidia L4 GPU allocation, with zonal redundancy",
        "Total Nvidia L4 GPU allocation, with zonal redundancy, per project per region",
    ),
    GPU_NO_ZONAL: (
        "run.googleapis.com/nvidia_l4_gpu_allocation_no_zonal_redundancy",
        "1/{project}/{region}",
        "Total Nvidia L4 GPU allocation, without zonal redundancy",
        "Total Nvidia L4 GPU allocation, without zonal redundancy, per project per region",
    ),
    CPU: (
        "run.googleapis.com/cpu_allocation",
        "1/{project}/{region}",
        "Total CPU allocation",
        "Total CPU allocation, in milli vCPU, per project per region",
    ),
    MEMORY: (
        "run.googleapis.com/mem_allocation",
        "By/{project}/{region}",
        "Total memory allocation",
        "Total memory allocation, in bytes, per project per region",
    ),
}

# Cloud Run regions (cloud.google.com/run/docs/locations, tier 1 and tier 2), for the
# `applicableLocations` of the default value.
CLOUD_RUN_REGIONS = [
    "africa-south1",
    "asia-east1",
    "asia-east2",
    "asia-northeast1",
    "asia-northeast2",
    "asia-northeast3",
    "asia-south1",
    "asia-south2",
    "asia-southeast1",
    "asia-southeast2",
    "australia-southeast1",
    "australia-southeast2",
    "europe-central2",
    "europe-north1",
    "europe-southwest1",
    "europe-west1",
    "europe-west10",
    "europe-west12",
    "europe-west2",
    "europe-west3",
    "europe-west4",
    "europe-west6",
    "europe-west8",
    "europe-west9",
    "me-central1",
    "me-central2",
    "me-west1",
    "northamerica-northeast1",
    "northamerica-northeast2",
    "southamerica-east1",
    "southamerica-west1",
    "us-central1",
    "us-east1",
    "us-east4",
    "us-east5",
    "us-south1",
    "us-west1",
    "us-west2",
    "us-west3",
    "us-west4",
]


class CloudQuotasBackend:
    """Quota values set per (project id, region, quota id); defaults for everything else."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self._values: dict[str, dict[str, dict[str, int]]] = {}

    def default(self, quota_id: str) -> int:
        if quota_id in (GPU_ZONAL, GPU_NO_ZONAL):
            return self.emulator.config.gpu_quota
        return DEFAULT_CPU_MILLI if quota_id == CPU else DEFAULT_MEMORY_BYTES

    def limit(self, project: str, region: str, quota_id: str) -> int:
        """The value in force for one region (what Cloud Run admits against)."""
        project_id = self.emulator.get(ServiceUsageBackend).resolve_project(project)
        by_region = self._values.get(project_id, {}).get(quota_id, {})
        return by_region.get(region, self.default(quota_id))

    def set_values(self, project: str, region: str, values: dict[str, Any]) -> dict[str, int]:
        if region not in CLOUD_RUN_REGIONS:
            raise invalid_argument(f"Unknown region {region!r}.")
        unknown = sorted(set(values) - set(QUOTAS))
        if unknown:
            raise invalid_argument(f"Unknown quota ids {unknown}; known: {sorted(QUOTAS)}.")
        for quota_id, value in values.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise invalid_argument(f"{quota_id}: the value must be an integer >= 0.")
        project_id = self.emulator.get(ServiceUsageBackend).resolve_project(project)
        for quota_id, value in values.items():
            self._values.setdefault(project_id, {}).setdefault(quota_id, {})[region] = value
        return {q: self.limit(project_id, region, q) for q in QUOTAS}

    def quota_info(self, project: str, service: str, quota_id: str) -> cloudquotas_v1.QuotaInfo:
        if service != RUN or quota_id not in QUOTAS:
            raise not_found(
                f"QuotaInfo for service {service!r} and quota id {quota_id!r} was not found."
            )
        project_id = self.emulator.get(ServiceUsageBackend).resolve_project(project)
        metric, unit, metric_name, quota_name = QUOTAS[quota_id]
        overrides = self._values.get(project_id, {}).get(quota_id, {})
        infos = [
            cloudquotas_v1.DimensionsInfo(
                dimensions={"region": region},
                details=cloudquotas_v1.QuotaDetails(value=value),
                applicable_locations=[region],
            )
            for region, value in sorted(overrides.items())
        ]
        infos.append(  # the less specific default comes last, as Google orders them
            cloudquotas_v1.DimensionsInfo(
                details=cloudquotas_v1.QuotaDetails(value=self.default(quota_id)),
                applicable_locations=[r for r in CLOUD_RUN_REGIONS if r not in overrides],
            )
        )
        number = project_number(project_id)
        return cloudquotas_v1.QuotaInfo(
            name=f"projects/{number}/locations/global/services/{service}/quotaInfos/{quota_id}",
            quota_id=quota_id,
            metric=metric,
            service=service,
            is_precise=True,
            container_type=cloudquotas_v1.QuotaInfo.ContainerType.PROJECT,
            dimensions=["region"],
            metric_display_name=metric_name,
            quota_display_name=quota_name,
            metric_unit=unit,
            quota_increase_eligibility=cloudquotas_v1.QuotaIncreaseEligibility(is_eligible=True),
            dimensions_infos=infos,
            service_request_quota_uri="https://console.cloud.google.com/iam-admin/quotas",
        )

    # -- persistence -----------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"values": self._values}

    def restore(self, state: dict[str, Any]) -> None:
        self._values = {
            p: {q: dict(r) for q, r in quotas.items()}
            for p, quotas in state.get("values", {}).items()
        }

    def close(self) -> None:
        pass


def routes(emulator: Emulator) -> list[Route]:
    def backend() -> CloudQuotasBackend:
        quotas = emulator.get(CloudQuotasBackend)
        return quotas

    def get_quota_info(call: Call) -> cloudquotas_v1.QuotaInfo:
        if call.param("location") != "global":
            raise invalid_argument("The location of a QuotaInfo must be 'global'.")
        return backend().quota_info(call.param("project"), call.param("service"), call.param("id"))

    def set_quotas(call: Call) -> dict[str, Any]:
        project = str(call.body.get("project") or emulator.config.project)
        values = call.body.get("quotas")
        if not isinstance(values, dict):
            raise invalid_argument('Give {"region": ..., "quotas": {quotaId: value}}.')
        return backend().set_values(project, str(call.body.get("region", "")), values)

    info = "/v1/projects/{project}/locations/{location}/services/{service}/quotaInfos/{id}"
    return [
        Route("GET", info, get_quota_info, SERVICE),
        Route("POST", "/_emulator/quotas", set_quotas),
    ]
