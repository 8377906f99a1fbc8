"""Service Usage: enable the APIs the pipeline needs (already enabled is success)."""

from __future__ import annotations

from google.cloud import service_usage_v1
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import clients
from tasks.clients import GoogleCloud
from tasks.errors import mark_enabled
from tasks.retries import TASK_RETRY_DELAYS_SECONDS, retry_transient, transient_retry

REQUIRED_SERVICES: tuple[str, ...] = (
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "run.googleapis.com",
    "storage.googleapis.com",
    "iam.googleapis.com",
    # The preflight's checkers: both APIs answer only once enabled (SERVICE_DISABLED otherwise).
    "cloudquotas.googleapis.com",
    "cloudresourcemanager.googleapis.com",
)
ENABLE_TIMEOUT_SECONDS = 600.0
NOOP_OPERATION = "operations/noop.DONE_OPERATION"


def enable_services(cloud: GoogleCloud, services: list[str] | tuple[str, ...]) -> list[str]:
    """Enable ``services`` (at most 20 per call, as Google allows); returns the enabled names."""
    client = clients.service_usage_client(cloud)
    mark_enabled(services)  # from now on their SERVICE_DISABLED 403s are propagation, retried
    enabled: list[str] = []
    for start in range(0, len(services), 20):
        chunk = list(services[start : start + 20])
        request = service_usage_v1.BatchEnableServicesRequest(
            parent=f"projects/{cloud.project}", service_ids=chunk
        )
        operation = client.batch_enable_services(request=request, retry=transient_retry())
        if operation.operation.done and operation.operation.name.endswith("noop.DONE_OPERATION"):
            enabled.extend(chunk)  # already enabled: Google answers with the noop operation
            continue
        response = operation.result(timeout=ENABLE_TIMEOUT_SECONDS)
        enabled.extend(s.config.name or s.name.rsplit("/", 1)[-1] for s in response.services)
    return enabled


@task(
    name="enable-apis",
    cache_policy=NO_CACHE,
    retries=len(TASK_RETRY_DELAYS_SECONDS),
    retry_delay_seconds=TASK_RETRY_DELAYS_SECONDS,
    retry_condition_fn=retry_transient,
)
def enable_apis(
    cloud: GoogleCloud, services: list[str] | tuple[str, ...] = REQUIRED_SERVICES
) -> list[str]:
    enabled = enable_services(cloud, services)
    get_run_logger().info("APIs enabled: %s", ", ".join(enabled))
    return enabled
