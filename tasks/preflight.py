"""Preflight: before anything is built, check what would otherwise fail late and expensively.

A first real deploy used to fail after a 10-20 minute build (and a rollback). ``preflight`` checks,
in a few seconds and with no side effect:

1. the region offers L4 GPUs on Cloud Run (``tasks.models.L4_REGIONS``, from Google's docs);
2. the caller can mint the ID token the smoke test will need (``tasks.id_tokens`` as it stands);
3. the caller holds the permissions the run needs (Resource Manager ``testIamPermissions``);
4. ``max_instances`` fits the GPU, CPU and memory quotas (Cloud Quotas API ``quotaInfos.get``),
   counting the GPUs other services in the region already hold in the same pool.

Checks 1 and 4 run per region (``preflight_regions``: GPU quota is per project per region, so
each region is judged on its own); 2 and 3 once. Each problem is named with its fix; all are
reported at once. A checker that cannot answer (the
API is disabled, the caller may not read quotas, a timeout) never blocks a deploy: it logs one
warning and the check is reported as "not checked". The deploy flow enables the Cloud Quotas and
Resource Manager APIs first (with the others; both must be enabled for their calls to answer),
so even a brand-new project gets its quotas checked before the build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import requests
from google.api_core import exceptions as gexc
from google.cloud import cloudquotas_v1, run_v2
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import clients, quotas
from tasks.clients import GoogleCloud
from tasks.errors import (
    AccessDeniedError,
    ConfigurationError,
    IdTokenError,
    OllamaCloudRunError,
    QuotaExceededError,
)
from tasks.id_tokens import GoogleIdTokenAuth
from tasks.models import ServiceSpec, l4_region_problem
from tasks.retries import transient_retry

CHECK_TIMEOUT_SECONDS = 30.0  # per checker, retries for transient errors included
PREFLIGHT_AUDIENCE = "https://preflight.ollama-cloudrun.invalid"  # any audience proves minting

# What deploy calls, by Google's permission names (cloud.google.com/iam/docs/permissions-reference):
REQUIRED_PERMISSIONS: tuple[str, ...] = (
    "serviceusage.services.enable",  # service_usage.enable_apis (batchEnable)
    "artifactregistry.repositories.get",  # artifact_registry.ensure_repository
    "artifactregistry.repositories.create",
    "artifactregistry.tags.list",  # artifact_registry.find_tag (skip the build)
    "storage.buckets.get",  # storage.ensure_bucket (gs://PROJECT_cloudbuild)
    "storage.buckets.create",
    "storage.objects.create",  # storage.upload_source
    "cloudbuild.builds.create",  # cloud_build.run_build
    "cloudbuild.builds.get",
    "iam.serviceAccounts.get",  # iam.ensure_service_account
    "iam.serviceAccounts.create",
    "iam.serviceAccounts.actAs",  # Cloud Run runs the revision as that account, Cloud Build
    # the build as its own (roles/iam.serviceAccountUser; Cloud Build answers 403 without it)
    "run.services.list",  # preflight: GPUs held by other services
    "run.services.get",  # cloud_run.apply_service / wait_until_ready
    "run.services.create",
    "run.services.update",
    "run.operations.get",  # polling Cloud Run's long-running operations
    "run.services.getIamPolicy",  # cloud_run.ensure_invoker
    "run.services.setIamPolicy",
)
# When deploy creates the build's service account, it grants its roles (tasks.cloud_build):
BUILD_ACCOUNT_PERMISSIONS: tuple[str, ...] = (
    "storage.buckets.getIamPolicy",  # roles/storage.objectViewer on the staging bucket
    "storage.buckets.setIamPolicy",
    "artifactregistry.repositories.getIamPolicy",  # roles/artifactregistry.writer on the repo
    "artifactregistry.repositories.setIamPolicy",
    "resourcemanager.projects.getIamPolicy",  # roles/logging.logWriter on the project
    "resourcemanager.projects.setIamPolicy",
)


def required_permissions(grants_build_roles: bool = True) -> tuple[str, ...]:
    """What this deploy will call: all of it, and the grants when it manages the build account."""
    return REQUIRED_PERMISSIONS + (BUILD_ACCOUNT_PERMISSIONS if grants_build_roles else ())


Outcome = Literal["passed", "failed", "not checked", "skipped"]


@dataclass(frozen=True)
class Check:
    name: str
    outcome: Outcome
    detail: str


@dataclass(frozen=True)
class PreflightReport:
    """Every check's outcome; ``raise_for_problems`` turns failures into one named error."""

    checks: tuple[Check, ...]
    quota_error: QuotaExceededError | None = field(default=None, compare=False, repr=False)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.outcome == "failed"]

    def summary(self) -> dict[str, str]:
        return {c.name: f"{c.outcome}: {c.detail}" if c.detail else c.outcome for c in self.checks}

    def raise_for_problems(self) -> None:
        """One error naming every problem; its class is the first problem's (region, ID token,
        permissions, quotas)."""
        failed = self.failed
        if not failed:
            return
        text = "Preflight failed; nothing was built or changed:\n" + "\n".join(
            f"- {c.name}: {c.detail}" for c in failed
        )
        first = failed[0].name
        if first == "quotas" and self.quota_error is not None:
            raise QuotaExceededError(
                text, quota=self.quota_error.quota, max_fit=self.quota_error.max_fit
            )
        kinds: dict[str, type[OllamaCloudRunError]] = {
            "region": ConfigurationError,
            "ID token": IdTokenError,
            "permissions": AccessDeniedError,
        }
        raise kinds.get(first, OllamaCloudRunError)(text)


# -- pure checks -------------------------------------------------------------------------------


def check_region(spec: ServiceSpec) -> Check:
    if not spec.gpu:
        return Check("region", "skipped", "no GPU requested")
    problem = l4_region_problem(spec.region)
    if problem is not None:
        return Check("region", "failed", problem)
    return Check("region", "passed", f"{spec.region} offers L4 GPUs")


def check_permissions(required: tuple[str, ...], granted: list[str]) -> Check:
    missing = [p for p in required if p not in set(granted)]
    if missing:
        return Check(
            "permissions",
            "failed",
            "the caller lacks "
            + ", ".join(missing)
            + " on the project: grant a role that has them (for example roles/run.admin, "
            "roles/artifactregistry.admin, roles/cloudbuild.builds.editor, "
            "roles/iam.serviceAccountAdmin, roles/iam.serviceAccountUser, roles/storage.admin, "
            "roles/serviceusage.serviceUsageAdmin, roles/resourcemanager.projectIamAdmin) or use "
            "credentials that hold them (deployments/README.md lists them)",
        )
    return Check("permissions", "passed", f"all {len(required)} held")


def region_value(info: cloudquotas_v1.QuotaInfo, region: str) -> int | None:
    """The value in force in ``region``: its own dimensions info, else the default (no region)."""
    fallback: int | None = None
    for dims in info.dimensions_infos:
        where = dims.dimensions.get("region")
        if where == region:
            return int(dims.details.value)
        if where is None and fallback is None:
            fallback = int(dims.details.value)
    return fallback


def gpu_held_by_others(services: list[run_v2.Service], spec: ServiceSpec) -> int:
    """GPUs that other services in the region hold in ``spec``'s pool (max instances × GPUs)."""
    held = 0
    for service in services:
        template = service.template
        if (
            service.name.rsplit("/", 1)[-1] == spec.service
            or not template.node_selector.accelerator
        ):
            continue
        if bool(template.gpu_zonal_redundancy_disabled) == spec.gpu_zonal_redundancy:
            continue  # the other pool
        count = template.containers[0].resources.limits.get("nvidia.com/gpu", "1")
        instances = service.scaling.max_instance_count or template.scaling.max_instance_count
        held += int(count if count.isdigit() else 1) * instances
    return held


def check_quotas(
    spec: ServiceSpec, limits: dict[str, int], project: str
) -> tuple[Check, QuotaExceededError | None]:
    found = quotas.shortfalls(spec, limits)
    if found:
        error = quotas.shortfall_error(found, project, spec.region)
        return Check("quotas", "failed", str(error)), error
    fits = ", ".join(f"{q} {quotas.format_amount(q, v)}" for q, v in limits.items())
    return Check("quotas", "passed", f"max_instances={spec.max_instances} fits ({fits})"), None


# -- checks that ask Google ----------------------------------------------------------------------


class CannotCheck(Exception):
    """A checker could not answer (not the caller's problem): warn and go on."""


def _cannot_check(exc: BaseException) -> CannotCheck:
    if isinstance(exc, gexc.GoogleAPICallError):
        reason = f"{exc.code} {exc.reason or ''} {exc.message}".strip()
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return CannotCheck(reason)


def granted_permissions(cloud: GoogleCloud, permissions: tuple[str, ...]) -> list[str]:
    """Resource Manager v3 ``projects.testIamPermissions``: the subset the caller holds."""
    session, base = clients.resource_manager_session(cloud)
    url = f"{base}/v3/projects/{cloud.project}:testIamPermissions"

    def ask() -> list[str]:
        response = session.post(url, json={"permissions": list(permissions)}, timeout=10)
        if response.status_code >= 400:
            raise gexc.from_http_response(response)
        return list(response.json().get("permissions", []))

    try:
        return transient_retry(cloud, CHECK_TIMEOUT_SECONDS)(ask)()
    except (gexc.GoogleAPICallError, gexc.RetryError, requests.RequestException) as exc:
        raise _cannot_check(exc) from exc
    finally:
        session.close()


def quota_limits(cloud: GoogleCloud, spec: ServiceSpec) -> dict[str, int]:
    """Cloud Quotas API: each quota ``spec`` draws on, as in force in its region, minus the GPUs
    other services there hold in the same pool."""
    client = clients.cloud_quotas_client(cloud)
    base = f"projects/{cloud.project}/locations/global/services/{quotas.SERVICE}/quotaInfos"
    limits: dict[str, int] = {}
    try:
        for quota_id in quotas.per_instance(spec):
            info = client.get_quota_info(
                name=f"{base}/{quota_id}", retry=transient_retry(cloud, CHECK_TIMEOUT_SECONDS)
            )
            value = region_value(info, spec.region)
            if value is not None:
                limits[quota_id] = value
    except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
        raise _cannot_check(exc) from exc
    gpu_quota = quotas.gpu_quota_id(spec.gpu_zonal_redundancy)
    if gpu_quota in limits:
        run = clients.run_services_client(cloud)
        try:
            others = list(
                run.list_services(
                    parent=f"projects/{cloud.project}/locations/{spec.region}",
                    retry=transient_retry(cloud, CHECK_TIMEOUT_SECONDS),
                )
            )
        except (gexc.GoogleAPICallError, gexc.RetryError):
            others = []  # no usage known: the limit alone is still worth checking
        limits[gpu_quota] = max(0, limits[gpu_quota] - gpu_held_by_others(others, spec))
    return limits


def check_id_token(cloud: GoogleCloud) -> Check:
    """The caller's own credentials mint the ID token the smoke test will send."""
    try:
        GoogleIdTokenAuth(PREFLIGHT_AUDIENCE, clients.caller_identity(cloud).id_tokens).get_token()
    except (IdTokenError, ConfigurationError) as exc:
        return Check("ID token", "failed", str(exc))
    return Check("ID token", "passed", "these credentials mint Google ID tokens")


def common_checks(
    cloud: GoogleCloud, *, needs_id_token: bool, grants_build_roles: bool = True
) -> list[Check]:
    """The checks that hold for every region: the ID token and the permissions."""
    checks = [
        check_id_token(cloud)
        if needs_id_token
        else Check("ID token", "skipped", "no smoke test in this run")
    ]
    try:
        required = required_permissions(grants_build_roles)
        checks.append(check_permissions(required, granted_permissions(cloud, required)))
    except CannotCheck as exc:
        get_run_logger().warning("Preflight cannot check permissions (going on): %s", exc)
        checks.append(Check("permissions", "not checked", str(exc)))
    return checks


def region_checks(
    cloud: GoogleCloud, spec: ServiceSpec
) -> tuple[Check, Check, QuotaExceededError | None]:
    """The checks of ``spec.region`` alone: it offers L4 GPUs, and its own quotas (GPU quota is
    per project per region) fit ``max_instances`` beside the services already there."""
    region = check_region(spec)
    if spec.gpu and region.outcome == "failed":
        return region, Check("quotas", "skipped", "the region has no L4 GPUs"), None
    try:
        quota, quota_error = check_quotas(spec, quota_limits(cloud, spec), cloud.project)
    except CannotCheck as exc:
        get_run_logger().warning("Preflight cannot check quotas (going on): %s", exc)
        return region, Check("quotas", "not checked", str(exc)), None
    return region, quota, quota_error


def run_checks(
    cloud: GoogleCloud, spec: ServiceSpec, *, needs_id_token: bool, grants_build_roles: bool = True
) -> PreflightReport:
    return run_region_checks(
        cloud, [spec], needs_id_token=needs_id_token, grants_build_roles=grants_build_roles
    )[spec.region]


def run_region_checks(
    cloud: GoogleCloud,
    specs: list[ServiceSpec],
    *,
    needs_id_token: bool,
    grants_build_roles: bool = True,
) -> dict[str, PreflightReport]:
    """Each region's report: its own region and quota checks after the common ones (asked once)."""
    common = common_checks(
        cloud, needs_id_token=needs_id_token, grants_build_roles=grants_build_roles
    )
    reports = {}
    for spec in specs:
        region, quota, quota_error = region_checks(cloud, spec)
        reports[spec.region] = PreflightReport((region, *common, quota), quota_error)
    return reports


def _log(region: str, report: PreflightReport) -> None:
    for check in report.checks:
        get_run_logger().info("Preflight %s %s: %s", region, check.name, check.outcome)


@task(name="preflight", cache_policy=NO_CACHE)
def preflight(
    cloud: GoogleCloud,
    spec: ServiceSpec,
    needs_id_token: bool = True,
    grants_build_roles: bool = True,
) -> PreflightReport:
    """Fail before the build, naming every problem; returns the report when nothing is wrong."""
    report = run_checks(
        cloud, spec, needs_id_token=needs_id_token, grants_build_roles=grants_build_roles
    )
    _log(spec.region, report)
    report.raise_for_problems()
    return report


@task(name="preflight-regions", cache_policy=NO_CACHE)
def preflight_regions(
    cloud: GoogleCloud,
    specs: list[ServiceSpec],
    needs_id_token: bool = True,
    grants_build_roles: bool = True,
) -> dict[str, PreflightReport]:
    """Every region's report, failed ones included (the flow leaves those regions out, and
    fails, through ``raise_for_problems``, only when every region failed)."""
    reports = run_region_checks(
        cloud, specs, needs_id_token=needs_id_token, grants_build_roles=grants_build_roles
    )
    for region, report in reports.items():
        _log(region, report)
    return reports
