"""Flow ``teardown``: delete what ``deploy`` made; NotFound is success, so it can always run again.

Normal mode deletes one deployment: the service, the repository with its images, the staging
objects and the service account — in that order, each step independent, so a partial deploy is
cleaned up too. Sweep mode deletes everything labelled ``managed-by=ollama-cloudrun`` older than
a TTL (service accounts, which have no labels, by the marker in their description).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from functools import partial
from typing import Any

from google.api_core import exceptions as gexc
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from tasks import artifact_registry, cloud_run, iam, storage
from tasks.clients import GoogleCloud, resolve_cloud
from tasks.errors import is_service_disabled
from tasks.models import (
    ACCOUNT_ID_PATTERN,
    DEPLOYMENT_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    REGION_PATTERN,
    REPOSITORY_PATTERN,
    SERVICE_ID_PATTERN,
    GoogleCloudTarget,
    label_value,
)

MANAGED = (MANAGED_BY_LABEL, MANAGED_BY_VALUE)


class TeardownParameters(GoogleCloudTarget):
    """One deployment to delete, or (``sweep``) everything managed and older than ``ttl_hours``."""

    service: str = Field(
        default="ollama-gemma", pattern=SERVICE_ID_PATTERN, description="Cloud Run service id"
    )
    region: str = Field(
        default="us-central1", pattern=REGION_PATTERN, description="region of the deployment"
    )
    repository: str = Field(
        default="ollama", pattern=REPOSITORY_PATTERN, description="Artifact Registry repository"
    )
    service_account_id: str = Field(
        default="ollama", pattern=ACCOUNT_ID_PATTERN, description="runtime service account id"
    )
    sweep: bool = Field(
        default=False, description="delete every managed resource older than ttl_hours"
    )
    ttl_hours: float = Field(
        default=24.0, ge=0, description="sweep: minimum age of what is deleted"
    )
    regions: list[str] = Field(
        default_factory=lambda: ["us-central1"], description="sweep: regions to search"
    )


Row = dict[str, str]


def _row(kind: str, name: str, deleted: bool) -> Row:
    return {"kind": kind, "name": name, "result": "deleted" if deleted else "already gone"}


def _delete(kind: str, name: str, delete: Callable[[], bool]) -> Row:
    """One deletion; an API that is not enabled cannot hold anything, so that is already gone."""
    try:
        return _row(kind, name, delete())
    except gexc.Forbidden as exc:
        if not is_service_disabled(exc):
            raise
        return {"kind": kind, "name": name, "result": "already gone (API not enabled)"}


@task(name="teardown-service", cache_policy=NO_CACHE)
def teardown_service(cloud: GoogleCloud, region: str, service: str) -> Row:
    name = cloud_run.service_name(cloud.project, region, service)
    return _delete("service", name, lambda: cloud_run.delete_service(cloud, name))


@task(name="teardown-repository", cache_policy=NO_CACHE)
def teardown_repository(cloud: GoogleCloud, region: str, repository: str) -> Row:
    name = artifact_registry.repository_name(cloud.project, region, repository)
    return _delete(
        "repository (with its images)",
        name,
        lambda: artifact_registry.delete_repository(cloud, region, repository),
    )


@task(name="teardown-staging-objects", cache_policy=NO_CACHE)
def teardown_staging(
    cloud: GoogleCloud, labels: dict[str, str], older_than: dt.datetime | None
) -> list[Row]:
    rows = []
    for blob in storage.list_staging_objects(cloud, labels, older_than):
        rows.append(
            _row(
                "staging object", f"gs://{blob.bucket.name}/{blob.name}", storage.delete_blob(blob)
            )
        )
    return rows


@task(name="teardown-service-account", cache_policy=NO_CACHE)
def teardown_service_account(cloud: GoogleCloud, email: str) -> Row:
    return _delete("service account", email, lambda: iam.delete_service_account(cloud, email))


def _listing(list_fn: Callable[[], list[Any]]) -> list[Any]:
    """A listing for the sweep; an API that is not enabled holds nothing."""
    try:
        return list_fn()
    except gexc.Forbidden as exc:
        if not is_service_disabled(exc):
            raise
        return []


@task(name="sweep-services", cache_policy=NO_CACHE)
def sweep_services(cloud: GoogleCloud, regions: list[str], older_than: dt.datetime) -> list[Row]:
    rows = []
    for region in regions:
        for svc in _listing(partial(cloud_run.list_managed_services, cloud, region, MANAGED)):
            if svc.create_time and svc.create_time < older_than:
                rows.append(_row("service", svc.name, cloud_run.delete_service(cloud, svc.name)))
    return rows


@task(name="sweep-repositories", cache_policy=NO_CACHE)
def sweep_repositories(
    cloud: GoogleCloud, regions: list[str], older_than: dt.datetime
) -> list[Row]:
    rows = []
    for region in regions:
        listed = _listing(
            partial(artifact_registry.list_managed_repositories, cloud, region, MANAGED)
        )
        for repo in listed:
            if repo.create_time and repo.create_time < older_than:
                repo_id = repo.name.rsplit("/", 1)[-1]
                deleted = artifact_registry.delete_repository(cloud, region, repo_id)
                rows.append(_row("repository (with its images)", repo.name, deleted))
    return rows


@task(name="sweep-service-accounts", cache_policy=NO_CACHE)
def sweep_service_accounts(cloud: GoogleCloud, older_than: dt.datetime) -> list[Row]:
    rows = []
    for account in _listing(lambda: iam.list_service_accounts(cloud)):
        created = iam.marker_created(account)
        if created is not None and created < older_than:
            rows.append(
                _row(
                    "service account",
                    account.email,
                    iam.delete_service_account(cloud, account.email),
                )
            )
    return rows


@flow(name="teardown")
def teardown(params: TeardownParameters | None = None) -> list[dict[str, str]]:
    """Delete and report: the table (also the ``teardown`` artifact) lists deleted/already gone."""
    params = params or TeardownParameters()
    cloud = resolve_cloud(params.project, params.credentials_block)
    rows: list[Row] = []
    if params.sweep:
        older_than = dt.datetime.now(dt.UTC) - dt.timedelta(hours=params.ttl_hours)
        rows += sweep_services(cloud, params.regions, older_than)
        rows += sweep_repositories(cloud, params.regions, older_than)
        rows += teardown_staging(cloud, {MANAGED_BY_LABEL: MANAGED_BY_VALUE}, older_than)
        rows += sweep_service_accounts(cloud, older_than)
        key = "teardown-sweep"
    else:
        rows.append(teardown_service(cloud, params.region, params.service))
        rows.append(teardown_repository(cloud, params.region, params.repository))
        labels = {MANAGED_BY_LABEL: MANAGED_BY_VALUE, DEPLOYMENT_LABEL: label_value(params.service)}
        rows += teardown_staging(cloud, labels, None)
        email = iam.service_account_email(cloud.project, params.service_account_id)
        rows.append(teardown_service_account(cloud, email))
        key = f"teardown-{params.service}"
    create_table_artifact(
        table=rows, key=key, description="What teardown deleted and what was already gone"
    )
    deleted = sum(r["result"] == "deleted" for r in rows)
    get_run_logger().info("Teardown: %d deleted, %d already gone", deleted, len(rows) - deleted)
    result: list[dict[str, Any]] = list(rows)
    return result
