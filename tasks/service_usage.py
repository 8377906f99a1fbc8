"""Service Usage: enable the APIs the pipeline needs (already enabled is success)."""

from __future__ import annotations

import time

from google.cloud import service_usage_v1
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import clients
from tasks.clients import GoogleCloud
from tasks.errors import google_errors
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
NOOP_OPERATION = "noop.DONE_OPERATION"  # already enabled: Google answers with this operation
BATCH_ENABLE_LIMIT = 20  # services per BatchEnableServices call, as Google allows


@task(
    name="enable-apis",
    cache_policy=NO_CACHE,
    retries=len(TASK_RETRY_DELAYS_SECONDS),
    retry_delay_seconds=TASK_RETRY_DELAYS_SECONDS,
    retry_condition_fn=retry_transient,
)
def enable_apis(
    cloud: GoogleCloud, services: list[str] | tuple[str, ...] = REQUIRED_SERVICES
) -> dict[str, float]:
    """Enable ``services``; returns each one with the ``time.time()`` its enabling began.

    Pass that to ``cloud.with_enabled``: from then on their SERVICE_DISABLED 403s are
    propagation, which the retries wait out.
    """
    client = clients.service_usage_client(cloud)
    enabled_at = dict.fromkeys(services, time.time())
    retry = transient_retry(cloud.with_enabled(enabled_at))
    enabled: list[str] = []
    with google_errors("enable the APIs the pipeline needs"):
        for start in range(0, len(services), BATCH_ENABLE_LIMIT):
            chunk = list(services[start : start + BATCH_ENABLE_LIMIT])
            request = service_usage_v1.BatchEnableServicesRequest(
                parent=f"projects/{cloud.project}", service_ids=chunk
            )
            operation = client.batch_enable_services(request=request, retry=retry)
            if operation.operation.done and operation.operation.name.endswith(NOOP_OPERATION):
                enabled.extend(chunk)  # already enabled: Google answers with the noop operation
                continue
            response = operation.result(timeout=ENABLE_TIMEOUT_SECONDS)
            enabled.extend(s.config.name or s.name.rsplit("/", 1)[-1] for s in response.services)
    get_run_logger().info("APIs enabled: %s", ", ".join(enabled))
    return enabled_at
