"""Flow ``teardown``: delete what ``deploy`` made; NotFound is success, so it can always run again.

Normal mode deletes one deployment: the service, the repository with its images, the staging
objects and the service account — in that order, each step independent, so a partial deploy is
cleaned up too. Sweep mode deletes everything labelled ``managed-by=ollama-cloudrun`` older than
a TTL (service accounts, which have no labels, by the marker in their description).
"""

from __future__ import annotations

import datetime as dt

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.parameters import TeardownParameters
from tasks import artifact_registry, cloud_run, iam, storage
from tasks.clients import resolve_cloud
from tasks.models import (
    DEPLOYMENT_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    label_value,
)

MANAGED = {MANAGED_BY_LABEL: MANAGED_BY_VALUE}


@flow(name="teardown")
def teardown(params: TeardownParameters | None = None) -> list[dict[str, str]]:
    """Delete and report: the table (also the ``teardown`` artifact) lists deleted/already gone."""
    params = params or TeardownParameters()
    cloud = resolve_cloud(params.project, params.credentials_block)
    if params.sweep:
        older_than = dt.datetime.now(dt.UTC) - dt.timedelta(hours=params.ttl_hours)
        deletions = [
            *cloud_run.sweep_services(cloud, params.regions, older_than),
            *artifact_registry.sweep_repositories(cloud, params.regions, older_than),
            *storage.delete_staging_objects(cloud, MANAGED, older_than),
            *iam.sweep_service_accounts(cloud, older_than),
        ]
        key = "teardown-sweep"
    else:
        service = cloud_run.service_name(cloud.project, params.region, params.service)
        deployment = {**MANAGED, DEPLOYMENT_LABEL: label_value(params.service)}
        email = iam.service_account_email(cloud.project, params.service_account_id)
        deletions = [
            cloud_run.delete_service(cloud, service),
            artifact_registry.delete_repository(cloud, params.region, params.repository),
            *storage.delete_staging_objects(cloud, deployment, None),
            iam.delete_service_account(cloud, email),
        ]
        key = f"teardown-{params.service}"
    rows = [deletion.row() for deletion in deletions]
    create_table_artifact(
        table=rows, key=key, description="What teardown deleted and what was already gone"
    )
    deleted = sum(deletion.deleted for deletion in deletions)
    get_run_logger().info("Teardown: %d deleted, %d already gone", deleted, len(rows) - deleted)
    return rows
