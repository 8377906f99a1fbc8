"""Flow ``teardown``: delete what ``deploy`` made; NotFound is success, so it can always run again.

Normal mode deletes one deployment: the service in each of its regions, the repository with its
images (in the first region, where deploy made it), the staging objects, the runtime service
account and the build's (when deploy made it: an id, not an email; with its grants on the project
and the staging bucket) — in that order, each step independent, so a partial deploy is cleaned up
too. Each must carry ``managed-by=ollama-cloudrun`` (or the service accounts their marker), else
nothing is deleted unless ``force``.

Sweep mode deletes what is idle, not what is old (tasks/idle.py): a managed service unused for
``idle_hours`` (no deploy, smoke test or batch recorded in its ``last-used`` label, no request
in Cloud Monitoring) or past its ``expires-at``; never one labelled ``keep=true`` or named by a
deployment in prefect.yaml. Then the repositories and service accounts no remaining service
uses (with their project grants), and old staging objects.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import yaml
from google.api_core import exceptions as gexc
from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.parameters import TeardownParameters
from tasks import artifact_registry, cloud_build, cloud_run, iam, idle, storage
from tasks.clients import GoogleCloud, resolve_cloud
from tasks.deletions import Deletion, Outcome
from tasks.errors import AccessDeniedError, UnmanagedResourceError
from tasks.models import (
    DEPLOYMENT_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    SERVICE_ID_PATTERN,
    ServiceSpec,
    is_managed,
    label_value,
    unmanaged_message,
)

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENT_FILES = (ROOT / "prefect.yaml", ROOT / "deployments" / "prefect.gcp.yaml")
DEFAULT_SERVICE = str(ServiceSpec.model_fields["service"].default)
MANAGED = {MANAGED_BY_LABEL: MANAGED_BY_VALUE}
# libyaml's safe loader when PyYAML has it: 10x faster than the pure-Python one (every sweep
# reads both deployment files), same documents.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read(read: Callable[[], T]) -> T | None:
    """A read for the ownership check: absent (NotFound, API not enabled) is None."""
    try:
        return read()
    except gexc.NotFound:
        return None
    except AccessDeniedError as exc:
        if exc.api is None:
            raise
        return None


def unmanaged_resources(cloud: GoogleCloud, params: TeardownParameters) -> list[str]:
    """The refusal of every named resource that exists without our label (or marker)."""
    refused = []
    for region in params.regions:
        service = cloud_run.service_name(cloud.project, region, params.service)
        found = _read(partial(cloud_run.get_service, cloud, service))
        if found is not None and not is_managed(found.labels):
            refused.append(unmanaged_message("Cloud Run service", service, deleting=True))
    get_repo = partial(artifact_registry.get_repository, cloud, params.region, params.repository)
    repo = _read(get_repo)
    if repo is not None and not is_managed(repo.labels):
        refused.append(unmanaged_message("Artifact Registry repository", repo.name, deleting=True))
    for email in _accounts(cloud, params):
        account = _read(partial(iam.get_service_account, cloud, email))
        if account is not None and not iam.is_managed_account(account):
            refused.append(unmanaged_message("service account", email, deleting=True))
    return refused


def _accounts(cloud: GoogleCloud, params: TeardownParameters) -> list[str]:
    """The runtime account, and the build's when deploy made it (an id; an email is the
    user's own account, never deleted)."""
    emails = [iam.service_account_email(cloud.project, params.service_account_id)]
    if "@" not in params.build_service_account:
        emails.append(iam.service_account_email(cloud.project, params.build_service_account))
    return emails


def protected_services(paths: tuple[Path, ...] = DEPLOYMENT_FILES) -> frozenset[str]:
    """The services the deployments in prefect.yaml (and its GCP twin) name: never swept."""
    names: set[str] = set()
    for path in paths:
        if not path.is_file():
            continue
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER) or {}
        for deployment in document.get("deployments") or []:
            params = (deployment.get("parameters") or {}).get("params") or {}
            entrypoint = str(deployment.get("entrypoint", ""))
            if entrypoint.startswith(("flows/deploy.py", "flows/pipeline.py")):
                names.add(str(params.get("service", DEFAULT_SERVICE)))
            for key in ("service", "target"):
                value = str(params.get(key, ""))
                if re.fullmatch(SERVICE_ID_PATTERN, value):
                    names.add(value)
    return frozenset(names)


def sweep(cloud: GoogleCloud, params: TeardownParameters) -> list[Deletion]:
    """Idle services first; then what no remaining service uses: repositories, accounts."""
    at = idle.now()
    protected = protected_services()
    if not protected:
        get_run_logger().warning("No prefect.yaml found: no service is protected by name")
    services = cloud_run.sweep_idle_services(
        cloud, params.regions, at, params.idle_hours, protected
    )
    swept = {d.name for d in services if d.outcome is not Outcome.KEPT}
    everywhere = cloud_run.list_all_services(cloud, params.regions)
    remaining = [s for s in everywhere if s.name not in swept]
    images = {c.image for s in remaining for c in s.template.containers}
    accounts = {s.template.service_account for s in remaining}
    if any(is_managed(s.labels) for s in remaining):  # they may be redeployed: builds need it
        accounts.update(_accounts(cloud, params)[1:])
    older_than = dt.datetime.fromtimestamp(at, dt.UTC) - dt.timedelta(hours=params.idle_hours)
    return [
        *services,
        *artifact_registry.sweep_idle_repositories(
            cloud, params.regions, at, params.idle_hours, images
        ),
        *storage.delete_staging_objects(cloud, MANAGED, older_than),
        *iam.sweep_idle_service_accounts(cloud, older_than, accounts),
    ]


@flow(name="teardown")
def teardown(params: TeardownParameters | None = None) -> list[dict[str, str]]:
    """Delete and report: the table (also the ``teardown`` artifact) lists deleted/already gone."""
    params = params or TeardownParameters()
    cloud = resolve_cloud(params.project, params.credentials_block)
    if params.sweep:
        deletions = sweep(cloud, params)
        key = "teardown-sweep"
    else:
        # Checked before anything is deleted: a refusal loses nothing.
        refused = [] if params.force else unmanaged_resources(cloud, params)
        if refused:
            raise UnmanagedResourceError("Teardown refused: " + " ".join(refused))
        deployment = {**MANAGED, DEPLOYMENT_LABEL: label_value(params.service)}
        runtime, *builder = _accounts(cloud, params)
        deletions = [
            *(
                cloud_run.delete_service(
                    cloud, cloud_run.service_name(cloud.project, region, params.service)
                )
                for region in params.regions
            ),
            artifact_registry.delete_repository(cloud, params.region, params.repository),
            *storage.delete_staging_objects(cloud, deployment, None),
            iam.delete_service_account(cloud, runtime),
            *(cloud_build.delete_build_service_account(cloud, email) for email in builder),
        ]
        key = f"teardown-{params.service}"
    rows = [deletion.row() for deletion in deletions]
    create_table_artifact(
        table=rows, key=key, description="What teardown deleted and what was already gone"
    )
    deleted = sum(deletion.deleted for deletion in deletions)
    get_run_logger().info("Teardown: %d deleted, %d already gone", deleted, len(rows) - deleted)
    return rows
